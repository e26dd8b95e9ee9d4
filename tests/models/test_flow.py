"""FlowPolicy: the rectified-flow noising, its timesteps, and one DPO step against flow_grpo's.

The tiny SD3 pipeline (:func:`save_tiny_sd3_pipeline`) is saved in the diffusers layout and loaded
through ``FlowPolicy(pretrained=folder)``.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models import DiffusionPolicy, FlowPolicy
from lightning_pref.models.tiny_flow import save_tiny_sd3_pipeline
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import CaPO, DiffusionDPO
from lightning_pref.types import PairBatch


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


def _policy(folder, **kwargs) -> FlowPolicy:
    policy = FlowPolicy(pretrained=str(folder), **kwargs)
    policy.build()
    return policy


def test_sigma_table_and_noising_by_hand(sd3_folder):
    """σ(t) = 3s/(1+2s), s = (t+1)/1000 (shift 3): t=0: 0.003/1.002 = 0.0029940; t=499:
    1.5/2 = 0.75; t=999: 1. x_t = (1-σ)x0 + σε, target ε - x0; the transformer is told 1000σ,
    the scheduler's own timesteps read backwards."""
    policy = _policy(sd3_folder)
    assert policy.sigmas[0].item() == pytest.approx(0.003 / 1.002, abs=1e-7)
    assert policy.sigmas[499].item() == pytest.approx(0.75, abs=1e-6)
    assert policy.sigmas[999].item() == pytest.approx(1.0)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    assert torch.allclose(policy.sigmas * 1000, scheduler.timesteps.flip(0))
    x0, eps = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    t = torch.tensor([499])
    assert policy.add_noise(x0, eps, t).item() == pytest.approx(0.25 * 2 + 0.75 * -1)
    assert policy.training_target(x0, eps, t).item() == -3.0
    assert policy.prediction_type == "flow" and policy.is_flow


def test_timestep_sampling_follows_diffusers_density(sd3_folder):
    """logit-normal: u = sigmoid(m + s z) picks scheduler index floor(1000u), t = 999 - index;
    mode: u' = 1 - u - 1.29 (cos²(πu/2) - 1 + u). Same draws, same t."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, generator=torch.Generator().manual_seed(0))
    t = _policy(sd3_folder).sample_timesteps(64, g, 0, 1000, torch.device("cpu"))
    assert torch.equal(t, 999 - (torch.sigmoid(z) * 1000).long())
    u = torch.rand(64, generator=torch.Generator().manual_seed(1))
    mode = _policy(sd3_folder, timestep_sampling="mode")
    t = mode.sample_timesteps(64, torch.Generator().manual_seed(1), 0, 1000, torch.device("cpu"))
    expected = 1 - u - 1.29 * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    assert torch.equal(t, 999 - (expected * 1000).long())
    uniform = _policy(sd3_folder, timestep_sampling="uniform")
    t = uniform.sample_timesteps(8, torch.Generator().manual_seed(2), 100, 200, torch.device("cpu"))
    assert ((t >= 100) & (t < 200)).all()
    with pytest.raises(ConfigError, match="uniform"):
        mode.sample_timesteps(8, g, 100, 200, torch.device("cpu"))


def test_schedule_methods_and_wrong_folders_are_refused_in_one_line(sd3_folder, tmp_path):
    """CaPO's SNR weights need ā_t: refused with a flow policy; an SD3 folder given to the UNet
    policy names FlowPolicy."""
    module = OfflinePairModule(FlowPolicy(pretrained=str(sd3_folder)), CaPO())
    with pytest.raises(ConfigError, match="DDPM noise schedule"):
        module.configure_model()
    with pytest.raises(ModelLoadError, match="FlowPolicy"):
        DiffusionPolicy(pretrained=str(sd3_folder)).build()


def _flow_grpo_dpo_step(policy, latents_w, latents_l, embeds, noise, u, beta):
    """flow_grpo ``scripts/train_sd3_dpo.py`` (training loop), in its order of operations: shared
    noise for winner and loser, logit-normal u -> indices = (u * 1000).long(), timesteps =
    scheduler.timesteps[indices], sigmas = scheduler.sigmas[indices], x_t = (1 - σ) x0 + σ ε; the
    learner and the reference (LoRA adapters off) at those timesteps; target ε - x0; per-sample
    MSE means; loss = mean(-logsigmoid(-0.5 β ((mse_w - ref_w) - (mse_l - ref_l))))."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        policy.pretrained, subfolder="scheduler"
    )
    bsz = latents_w.shape[0]
    model_input = torch.cat([latents_w, latents_l])
    noise = torch.cat([noise, noise])
    indices = (u * scheduler.config.num_train_timesteps).long()
    timesteps = torch.cat([scheduler.timesteps[indices]] * 2)
    sigmas = torch.cat([scheduler.sigmas[indices]] * 2).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * model_input + sigmas * noise
    hidden, pooled = embeds[:, :-1].repeat(2, 1, 1), embeds[:, -1, :32].repeat(2, 1)
    kwargs = {"encoder_hidden_states": hidden, "pooled_projections": pooled, "return_dict": False}
    pred = policy.unet(hidden_states=noisy, timestep=timesteps, **kwargs)[0]
    with torch.no_grad(), policy.adapters_disabled():
        ref = policy.unet(hidden_states=noisy, timestep=timesteps, **kwargs)[0]
    target = noise - model_input
    theta = ((pred.float() - target.float()) ** 2).reshape(2 * bsz, -1).mean(dim=1)
    ref_mse = ((ref.float() - target.float()) ** 2).reshape(2 * bsz, -1).mean(dim=1)
    w_diff, l_diff = theta[:bsz] - ref_mse[:bsz], theta[bsz:] - ref_mse[bsz:]
    return torch.mean(-F.logsigmoid(-0.5 * beta * (w_diff - l_diff)))


def test_one_dpo_step_matches_flow_grpo(sd3_folder):
    """Our OfflinePairModule + DiffusionDPO(beta=100) on a LoRA FlowPolicy (reference: adapters
    off) gives flow_grpo's loss and LoRA gradients for the same latents, noise and u."""
    module = OfflinePairModule(
        FlowPolicy(pretrained=str(sd3_folder), lora_rank=4, lora_alpha=8),
        DiffusionDPO(beta=100.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    torch.manual_seed(0)
    module.configure_model()
    policy = module.policy
    with torch.no_grad():  # a trained-looking adapter, so policy and reference differ
        for name, param in policy.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(4, 16, 8, 8, generator=g)
    noise = torch.randn(2, 16, 8, 8, generator=g)
    u = torch.sigmoid(torch.randn(2, generator=g))
    embeds = policy.encode_prompt(["a red circle", "a blue square"])
    batch = PairBatch(latents[:2], latents[2:], embeds, torch.ones(2))
    module.sample_noise = lambda shape, generator, dtype: noise
    policy.sample_timesteps = lambda n, generator, low, high, device: 999 - (u * 1000).long()
    ours = module.objective(module.denoise_pair(batch, torch.Generator())).loss
    grads = torch.autograd.grad(ours, [p for p in policy.unet.parameters() if p.requires_grad])
    theirs = _flow_grpo_dpo_step(policy, latents[:2], latents[2:], embeds, noise, u, 100.0)
    expected = torch.autograd.grad(theirs, [p for p in policy.unet.parameters() if p.requires_grad])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert ours.item() != pytest.approx(math.log(2), abs=1e-4)  # policy and reference differ
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_our_sampler_reproduces_the_sd3_pipeline(sd3_folder):
    """sample_images on the flow policy (Euler ODE, CFG 4.5, 4 steps) gives the diffusers
    StableDiffusion3Pipeline's images for the same seed within 1e-5."""
    from diffusers import StableDiffusion3Pipeline

    from lightning_pref.models.sampling import sample_images, sample_seeded

    policy = _policy(sd3_folder)
    captions = ["a red circle", "a blue square on the left"]
    ours = sample_images(policy, captions, torch.Generator().manual_seed(0), 4, 4.5)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(sd3_folder), text_encoder_3=None, tokenizer_3=None
    )
    theirs = pipe(
        captions,
        num_inference_steps=4,
        guidance_scale=4.5,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    torch.testing.assert_close((ours + 1) / 2, theirs, atol=1e-5, rtol=0)
    one = sample_seeded(policy, captions[:1], [0], 4, 4.5)
    torch.testing.assert_close(one, ours[:1], atol=1e-5, rtol=0)  # batch of 1 vs 2


def _flow_grpo_sde_step(scheduler, v, x, timestep, prev_sample, noise_level):
    """flow_grpo ``diffusers_patch/sd3_sde_with_logprob.py`` in its order of operations, on the
    scheduler's own tables after ``set_timesteps``."""
    step = [int((scheduler.timesteps == t).nonzero()[0]) for t in timestep]
    sigma = scheduler.sigmas[step].view(-1, 1, 1, 1)
    sigma_prev = scheduler.sigmas[[i + 1 for i in step]].view(-1, 1, 1, 1)
    sigma_max = scheduler.sigmas[1].item()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    mean = (
        x * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    scale = std_dev_t * torch.sqrt(-1 * dt)
    log_prob = (
        -((prev_sample - mean) ** 2) / (2 * scale**2)
        - torch.log(scale)
        - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi)))
    )
    return mean, log_prob.mean(dim=(1, 2, 3))


def test_flow_sde_step_and_log_density_match_flow_grpo_and_the_gaussian(sd3_folder):
    """Flow-GRPO's SDE step (η 0.7) at the first level (σ = 1: sigma_max stands in) and a middle
    one: our mean equals flow_grpo's; our log-density of the drawn x_next equals theirs and the
    Gaussian written out by hand: mean over C,h,w of -(x-μ)²/(2s²) - log s - log sqrt(2π)."""
    from lightning_pref.models.sampling import flow_sde_step, gaussian_logprob

    policy = _policy(sd3_folder)
    sigmas = policy.sampling_sigmas(10)  # [11], 1 -> 0
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(policy.noise_scheduler.config)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    i = torch.tensor([0, 4])
    step = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], float(sigmas[1]), 0.7, g)
    mean, theirs = _flow_grpo_sde_step(
        scheduler, v, x, scheduler.timesteps[i], step.prev_sample, 0.7
    )
    torch.testing.assert_close(step.mean, mean, rtol=1e-6, atol=1e-6)
    ours = gaussian_logprob(step.prev_sample, step.mean, step.std)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    s = step.std.view(-1, 1, 1, 1).double()
    z = (step.prev_sample.double() - step.mean.double()) / s
    by_hand = (-(z**2) / 2 - s.log() - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(ours.double(), by_hand, rtol=1e-6, atol=1e-6)
    ode = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], float(sigmas[1]), 0.0, g)
    euler = x + (sigmas[i + 1] - sigmas[i]).view(-1, 1, 1, 1) * v
    torch.testing.assert_close(ode.prev_sample, euler)  # η = 0: the Euler step, no noise


def _stub_flow(velocity):
    """A policy-like object: SD3's sigma table (shift 3) and a velocity given in the test."""
    from types import SimpleNamespace

    s = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    return SimpleNamespace(
        is_flow=True,
        num_train_timesteps=1000,
        sigmas=(3 * s / (1 + 2 * s)).float(),
        unet=None,
        velocity=lambda unet, x, sigma, emb: velocity(x, sigma),
    )


def test_flow_inversion_by_hand():
    """Grid n=5: levels -1, 199, 399, 599, 799, 999. t=300 takes the steps from -1 and 199 and
    lands at 399; with a constant velocity c, x = x0 + σ(399)·c (the steps telescope), and the
    target is ε̂ - x0 with ε̂ = (x - (1 - σ(300)) x0) / σ(300). ReNoise with v(x) = x: each step
    is x ← x (1 + d + d²/2), d the step's σ difference."""
    from lightning_pref.models.noising import FlowInversion

    sig = lambda t: 3 * ((t + 1) / 1000) / (1 + 2 * (t + 1) / 1000)  # noqa: E731
    x0, c = torch.full((1, 1, 1, 1), 0.5), 2.0
    strategy = FlowInversion(num_steps=5)
    assert strategy.levels(1000) == [-1, 199, 399, 599, 799, 999]
    out = strategy(
        _stub_flow(lambda x, s: torch.full_like(x, c)),
        x0,
        torch.tensor([300]),
        None,
        torch.zeros(1, 1, 1),
    )
    assert out.x_t.item() == pytest.approx(0.5 + sig(399) * c, rel=1e-6)
    eps = (out.x_t.item() - (1 - sig(300)) * 0.5) / sig(300)
    assert out.target.item() == pytest.approx(eps - 0.5, rel=1e-5)
    renoise = FlowInversion(num_steps=5, renoise=True)
    out = renoise(_stub_flow(lambda x, s: x), x0, torch.tensor([300]), None, torch.zeros(1, 1, 1))
    d1, d2 = sig(199), sig(399) - sig(199)
    expected = 0.5 * (1 + d1 + d1**2 / 2) * (1 + d2 + d2**2 / 2)
    assert out.x_t.item() == pytest.approx(expected, rel=1e-5)
