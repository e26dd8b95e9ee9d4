import math

import torch
from diffusers import DDIMScheduler
from torch.testing import assert_close

from lightning_pref.models.sampling import (
    ddim_step,
    ddim_timesteps,
    gaussian_logprob,
    sample_images,
)


def test_leading_timesteps_match_spo():
    assert ddim_timesteps(1000, 20)[:3] == [951, 901, 851]
    assert ddim_timesteps(1000, 20)[-1] == 1
    assert len(ddim_timesteps(1000, 20)) == 20


def test_ddim_step_matches_diffusers(tiny_policy):
    sched = DDIMScheduler.from_config(tiny_policy.noise_scheduler.config, set_alpha_to_one=False)
    sched.set_timesteps(20)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, 20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    out = torch.randn(2, 4, 8, 8, generator=g)
    for t_int in (951, 51, 1):
        t = torch.full((2,), t_int)
        for eta in (0.0, 1.0):
            noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(t_int))
            ours = ddim_step(
                tiny_policy, out, x, t, t - 50, eta, generator=torch.Generator().manual_seed(t_int)
            )
            theirs = sched.step(out, t_int, x, eta=eta, variance_noise=noise)
            assert_close(ours.prev_sample, theirs.prev_sample, rtol=1e-5, atol=1e-5)
            assert_close(ours.pred_x0, theirs.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_logprob_is_the_gaussian_density_by_hand():
    """x = (0.5, -1), mean = (0, 0), σ = 2 for one sample:
    per element: -x²/(2σ²) - log σ - log √(2π) = -x²/8 - log 2 - 0.918939
    mean over the 2 elements: -(0.25 + 1)/16 - 0.693147 - 0.918939 = -1.690211
    """
    x = torch.tensor([[0.5, -1.0]])
    lp = gaussian_logprob(x, torch.zeros(1, 2), torch.tensor([2.0]))
    expected = -(0.25 + 1.0) / 16 - math.log(2) - 0.5 * math.log(2 * math.pi)
    assert_close(lp, torch.tensor([expected]), rtol=0, atol=1e-6)
    dist = torch.distributions.Normal(torch.zeros(1, 2), 2.0)
    assert_close(lp, dist.log_prob(x).mean(dim=1))


def test_sampled_step_logprob_matches_normal(tiny_policy):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g)
    out = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.full((3,), 501)
    step = ddim_step(tiny_policy, out, x, t, t - 50, eta=1.0, generator=g)
    assert (step.std > 0).all()
    lp = gaussian_logprob(step.prev_sample, step.mean, step.std)
    ref = torch.distributions.Normal(step.mean, step.std.view(-1, 1, 1, 1)).log_prob(
        step.prev_sample
    )
    assert_close(lp, ref.flatten(1).mean(1), rtol=1e-5, atol=1e-5)


def test_sampling_is_deterministic_and_seed_dependent(tiny_policy):
    caps = ["a red circle", "a blue square"]
    a = sample_images(tiny_policy, caps, torch.Generator().manual_seed(0), num_steps=4)
    b = sample_images(tiny_policy, caps, torch.Generator().manual_seed(0), num_steps=4)
    c = sample_images(tiny_policy, caps, torch.Generator().manual_seed(1), num_steps=4)
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_negative_denoiser_equal_to_positive_is_plain_cfg(tiny_policy):
    caps = ["a red circle"]
    plain = sample_images(tiny_policy, caps, torch.Generator().manual_seed(0), num_steps=3)
    same = sample_images(
        tiny_policy,
        caps,
        torch.Generator().manual_seed(0),
        num_steps=3,
        uncond_denoiser=tiny_policy,
    )
    assert_close(plain, same, rtol=1e-5, atol=1e-5)
