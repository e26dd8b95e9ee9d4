"""Noising strategies: forward noising, DDIM inversion (InPO) and ReNoise inversion (SmPO)."""

import pytest
import torch
from diffusers import DDIMScheduler
from torch.testing import assert_close

from lightning_pref.models.inversion import InversionGrid, invert
from lightning_pref.models.noising import DDIMInversion, ForwardNoising, ReNoiseInversion
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO, InPO, SmPO


def inverse_scheduler(policy, num_steps, landing="at_or_above"):
    return InversionGrid.from_config(policy.noise_scheduler.config, num_steps, landing)


def _inputs(policy, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(n, 4, 8, 8, generator=g) * 2 - 1) * 0.5
    embeds = policy.encode_prompt(["a red circle", "a blue square", "two dots"][:n])
    return x0, embeds


def test_renoise_with_the_same_estimate_twice_is_ddim(tiny_policy):
    """A denoiser that ignores x returns the same ε at the tentative point, so ReNoise's average
    (e1 + e2)/2 = e1 and every step equals plain DDIM inversion, exactly."""
    x0, embeds = _inputs(tiny_policy)
    t = torch.tensor([999, 450, 120])
    scheduler = inverse_scheduler(tiny_policy, 5)

    def x_blind(x, tau, emb):
        return tiny_policy(torch.zeros_like(x), tau, emb)

    ddim = invert(x_blind, scheduler, x0, t, embeds)
    renoise = invert(x_blind, scheduler, x0, t, embeds, renoise=True)
    assert torch.equal(ddim, renoise)
    # With a denoiser that does read x the second estimate differs: the ReNoise path is live.
    assert not torch.allclose(
        invert(tiny_policy, scheduler, x0, t, embeds),
        invert(tiny_policy, scheduler, x0, t, embeds, renoise=True),
    )


def _ddim_sample(denoiser, scheduler_config, x, embeds, num_steps, below):
    """DDIM (η = 0, no CFG) down the ``num_steps`` grid from the first grid point < ``below``."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_steps)
    with torch.no_grad():
        for tau in scheduler.timesteps:
            if tau < below:
                x = scheduler.step(denoiser(x, tau.repeat(x.shape[0]), embeds), tau, x).prev_sample
    return x


def _rel_rms(x, x0):
    return ((x - x0).pow(2).mean() / x0.pow(2).mean()).sqrt().item()


def test_ddim_inversion_round_trip_full_depth_gaussian_model(tiny_policy):
    """A tiny model with closed-form weights: the optimal ε-predictor for data ~ N(0, σ²I),
    ε(x, t) = sqrt(1-ā_t)·x / (ā_t σ² + 1 - ā_t). Invert x0 all the way up (t = 1000), then sample
    back down the same grid: the error shrinks with the grid (the inversion evaluates ε at the
    start of each step) and is under 7% RMS at 50 steps (5.8% measured); the inverted latent is a
    unit-variance noise map, as x_T should be."""
    sigma2, alphas = 0.25, tiny_policy.alphas_cumprod

    def gaussian_eps(x, t, embeds):
        a = alphas[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * sigma2 + 1 - a)

    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigma2**0.5
    embeds, t, errors = torch.zeros(3, 1, 1), torch.full((3,), 1000), []
    for num_steps in (10, 20, 50):
        x_t = invert(gaussian_eps, inverse_scheduler(tiny_policy, num_steps), x0, t, embeds)
        config = tiny_policy.noise_scheduler.config
        errors.append(
            _rel_rms(_ddim_sample(gaussian_eps, config, x_t, embeds, num_steps, 1000), x0)
        )
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.07
    assert 0.9 < x_t.std().item() < 1.1


def test_ddim_inversion_round_trip_tiny_unet(tiny_policy):
    """The tiny (random) UNet, inverted for t = 300 on a 200-step grid (it lands at level 301) and
    sampled back from there with the same model and captions, returns within 3% RMS of x0; forward
    noising to the same level and sampling back does not (> 30%)."""
    x0, embeds = _inputs(tiny_policy)
    num_steps, t = 200, torch.full((3,), 300)
    grid = inverse_scheduler(tiny_policy, num_steps)
    x_t = invert(tiny_policy, grid, x0, t, embeds)
    top = int(grid.landing_levels(t)[0])  # where the inversion stopped: 301, the first level >= t
    assert top == 301
    config = tiny_policy.noise_scheduler.config
    assert _rel_rms(_ddim_sample(tiny_policy, config, x_t, embeds, num_steps, top + 1), x0) < 0.03
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    forward = tiny_policy.add_noise(x0, noise, torch.full((3,), top))
    back = _ddim_sample(tiny_policy, config, forward, embeds, num_steps, top + 1)
    assert _rel_rms(back, x0) > 0.3


def test_each_image_stops_at_its_own_level(tiny_policy):
    """Grid of 5 is -199, 1, 201, 401, 601 (steps τ → τ+200). t = 1 takes only -199 → 1; a mixed
    batch gives the same latents as inverting each image alone (t = 450 takes -199, 1, 201, 401 and
    lands at 601)."""
    x0, embeds = _inputs(tiny_policy)
    grid = inverse_scheduler(tiny_policy, 5)
    assert grid.timesteps == [-199, 1, 201, 401, 601]
    t = torch.tensor([1, 450, 999])
    assert grid.landing_levels(t).tolist() == [1, 601, 801]
    batch = invert(tiny_policy, grid, x0, t, embeds)
    assert not torch.equal(batch[0], x0[0])
    for i in (0, 1, 2):
        alone = invert(tiny_policy, grid, x0[i : i + 1], t[i : i + 1], embeds[i : i + 1])
        assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    # t = 402 and t = 450 both take the step from 401: the same latents.
    t_402 = invert(tiny_policy, grid, x0[1:2], torch.tensor([402]), embeds[1:2])
    assert_close(t_402, batch[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", [DDIMInversion(5, 0.0), ReNoiseInversion(5)])
def test_inversion_target_is_the_implied_noise(strategy, tiny_policy):
    """The target ε satisfies x_t = sqrt(ā_t) x0 + sqrt(1 - ā_t) ε at the sampled t."""
    x0, embeds = _inputs(tiny_policy)
    t = torch.tensor([999, 450, 120])
    out = strategy(tiny_policy, x0, t, torch.zeros_like(x0), embeds)
    a = tiny_policy.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert_close(out.x_t, a.sqrt() * x0 + (1 - a).sqrt() * out.target, rtol=1e-4, atol=1e-5)
    assert not torch.equal(out.x_t, x0)


def test_forward_noising_matches_policy():
    from lightning_pref.models.tiny import TinyDiffusionPolicy

    policy = TinyDiffusionPolicy(prediction_type="v_prediction")
    policy.build()
    x0, embeds = _inputs(policy)
    noise, t = torch.randn_like(x0), torch.tensor([10, 500, 990])
    out = ForwardNoising()(policy, x0, t, noise, embeds)
    assert torch.equal(out.x_t, policy.add_noise(x0, noise, t))
    assert torch.equal(out.target, policy.training_target(x0, noise, t))


def test_inpo_extra_noise_is_seeded_and_small(tiny_policy):
    """η = 0.1 adds 0.1·z·std per step: reproducible under a seed and different from η = 0."""
    x0, embeds = _inputs(tiny_policy)
    t = torch.tensor([999, 999, 999])
    scheduler = inverse_scheduler(tiny_policy, 10)

    def run(eta, seed):
        g = torch.Generator().manual_seed(seed)
        return invert(tiny_policy, scheduler, x0, t, embeds, extra_noise=eta, generator=g)

    assert torch.equal(run(0.1, 3), run(0.1, 3))
    gap = (run(0.1, 3) - run(0.0, 3)).abs()
    assert gap.max().item() > 0


def test_module_uses_objective_default_noising_unless_overridden(tiny_policy):
    assert isinstance(OfflinePairModule(tiny_policy, SmPO()).noising, ReNoiseInversion)
    assert isinstance(OfflinePairModule(tiny_policy, InPO()).noising, DDIMInversion)
    assert isinstance(OfflinePairModule(tiny_policy, DiffusionDPO()).noising, ForwardNoising)
    custom = DDIMInversion(4, 0.0)
    assert OfflinePairModule(tiny_policy, DiffusionDPO(), noising=custom).noising is custom


def test_bad_grid_size():
    with pytest.raises(ValueError, match="num_steps"):
        DDIMInversion(0)


@pytest.mark.parametrize("strategy_cls", [DDIMInversion, ReNoiseInversion])
def test_snap_to_grid_trains_where_the_inversion_stopped(strategy_cls, tiny_policy):
    """snap_to_grid: the same x_t as the official placement, but the target uses ā at the level
    where x_t landed and the denoiser is told that level (the official code keeps the sampled t)."""
    x0, embeds = _inputs(tiny_policy)
    t = torch.tensor([999, 450, 120])
    extra = {"extra_noise": 0.0} if strategy_cls is DDIMInversion else {}
    official = strategy_cls(5, **extra)(tiny_policy, x0, t, torch.zeros_like(x0), embeds)
    snapped = strategy_cls(5, snap_to_grid=True, **extra)(
        tiny_policy, x0, t, torch.zeros_like(x0), embeds
    )
    assert official.timesteps is None
    assert snapped.timesteps.tolist() == [801, 601, 201]
    assert_close(snapped.x_t, official.x_t)
    a = tiny_policy.alphas_cumprod[snapped.timesteps].view(-1, 1, 1, 1)
    assert_close(snapped.x_t, a.sqrt() * x0 + (1 - a).sqrt() * snapped.target, rtol=1e-4, atol=1e-5)


def test_module_gives_the_snapped_timestep_to_the_denoiser(tiny_policy, image_pair_batch):
    module = OfflinePairModule(
        tiny_policy, DiffusionDPO(), noising=ReNoiseInversion(5, snap_to_grid=True)
    )
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    pair = module.denoise_pair(module.to_latents(image_pair_batch, g), g)
    assert set(pair.timesteps.tolist()) <= {1, 201, 401, 601, 801}
