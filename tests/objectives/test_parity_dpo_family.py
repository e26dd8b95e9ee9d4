"""Parity with the official scripts: Diffusion-DPO, SFT, Diffusion-NPO, SmPO and InPO.

STYLE "Tests" item 4. Each test runs one step of :class:`OfflinePairModule` on a tiny float64 UNet
(loss, then backward) and compares the loss and the policy's gradient with a reference step
written here in plain torch, in the official script's order of operations: how x_t is built,
which t the UNet is told, the target, the reductions and the scale. The references are
transcribed from reading the official code (commits in METHODS' table) and call no noising,
inversion or objective code of ours: only the policy's UNet and the frozen reference UNet.

Draws are pinned to a ``[2B]`` t and a ``[2B]`` noise. The official pair scripts draw 2B and keep
the first half for winner and loser alike (``chunk(2)[0].repeat(2)``); the references do that,
so a module that does not share t or ε inside a pair reads the second half and fails.

The inversion references (SmPO, InPO) write out diffusers 0.20.0, which both repositories pin:
``DDIMInverseScheduler.set_timesteps`` (scheduling_ddim_inverse.py at v0.20.0, lines 255-293:
leading grid ``k·Δ + steps_offset``, ``np.roll`` by one, first entry ``grid[1] - Δ``), its
``step`` (lines 296-377: from level τ to τ + Δ; ā at a negative level is 1 with
``set_alpha_to_one``, ā_0 otherwise; x̂0 clamped when ``clip_sample``) and
``DDIMScheduler._get_variance`` (scheduling_ddim.py at v0.20.0, lines 256-264). Scheduler flags
are read as ``DDIMScheduler.from_pretrained`` would: a key the config lacks takes the DDIM
default (``set_alpha_to_one`` True, ``clip_sample`` True). Every pair shares one t there, since
the official loop inverts the whole batch up to ``timesteps[0]``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_pref.models.noising import ForwardNoising
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import SFT, DiffusionDPO, DiffusionNPO, InPO, SmPO
from lightning_pref.types import PairBatch
from tests.objectives.parity import (
    assert_parity,
    double_policy,
    perturb,
    pin_draws,
    trainable_grad,
)

B = 2  # pairs
SEED = 5  # of the generator handed to the module step (InPO's inversion noise)
T2 = torch.tensor([617, 42, 5, 999])  # [2B] pinned timestep draw; the official code keeps [:B]
_DRAW = torch.Generator().manual_seed(11)
NOISE = torch.randn(2 * B, 4, 8, 8, generator=_DRAW, dtype=torch.float64)  # [2B] pinned ε draw
SD15 = {"set_alpha_to_one": False}  # SD1.5's scheduler_config.json (ā_0 at negative levels)
CLIP = {"clip_sample": True}  # x̂0 clamped to ±1 in each inversion step
PERTURB = 1e-3  # policy vs reference: keeps β·(model_diff - ref_diff) O(1), off the flat tails


def _module(objective, noising=None, prediction_type="epsilon", **scheduler_flags):
    """The module on a fresh float64 policy, moved away from its frozen reference copy."""
    policy = double_policy(prediction_type=prediction_type)
    if scheduler_flags:
        policy.noise_scheduler.register_to_config(**scheduler_flags)
    module = OfflinePairModule(policy, objective, reference="copy", noising=noising)
    module.configure_model()
    perturb(module.policy.unet, scale=PERTURB)
    return module


def _pairs(pref_prob=(1.0, 1.0)) -> PairBatch:
    g = torch.Generator().manual_seed(3)
    x0_w, x0_l = (torch.randn(B, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    embeds = torch.randn(B, 4, 16, generator=g, dtype=torch.float64)
    return PairBatch(x0_w, x0_l, embeds, torch.tensor(pref_prob, dtype=torch.float64))


def _module_step(monkeypatch, module, pairs, timesteps=T2) -> tuple[Tensor, Tensor]:
    """Our step: the loss and the policy's gradient."""
    pin_draws(monkeypatch, module, timesteps, NOISE)
    out = module.objective(module.denoise_pair(pairs, torch.Generator().manual_seed(SEED)))
    out.loss.backward()
    grad = trainable_grad(module.policy.unet)
    module.policy.unet.zero_grad(set_to_none=True)
    return out.loss.detach(), grad


def _backward(module, loss: Tensor) -> tuple[Tensor, Tensor]:
    """The reference step's loss and gradient (then the gradients are cleared)."""
    loss.backward()
    grad = trainable_grad(module.policy.unet)
    module.policy.unet.zero_grad(set_to_none=True)
    return loss.detach(), grad


def _unet(unet, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
    return unet(x, t, encoder_hidden_states=c).sample


def _alphas_cumprod(config) -> Tensor:
    """ā of SD's schedule as diffusers computes it: float32 β on a sqrt-linspace, cumprod."""
    assert config["beta_schedule"] == "scaled_linear"
    lo, hi = config["beta_start"] ** 0.5, config["beta_end"] ** 0.5
    betas = torch.linspace(lo, hi, config["num_train_timesteps"], dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).double()


def _add_noise(abar: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``DDPMScheduler.add_noise``: sqrt(ā_t) x0 + sqrt(1 - ā_t) ε."""
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _dpo_loss(module, noisy, t, c, target, scale) -> Tensor:
    """The shared loss block (DiffusionDPO train.py 1114-1145; SmPO 1038-1064; InPO 1025-1052).

    Per-sample MSE over C, h, w; the first half of the batch is the winner; the reference UNet
    under no_grad; ``inside = scale · (model_diff - ref_diff)``; ``-logsigmoid(inside).mean()``.
    """
    model_losses = (_unet(module.policy.unet, noisy, t, c) - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        ref_losses = (_unet(module.reference_unet, noisy, t, c) - target).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
    inside = scale * (model_diff - ref_diff)
    return -F.logsigmoid(inside).mean()


def _official_forward_pair_loss(module, pairs: PairBatch, scale) -> Tensor:
    """DiffusionDPO train.py 1016-1106: w then l, the first half of t and ε shared, ε target."""
    abar = _alphas_cumprod(module.policy.noise_scheduler.config)
    latents = torch.cat([pairs.latents_w, pairs.latents_l])  # [2B] (1016: channel halves, w first)
    timesteps = T2.chunk(2)[0].repeat(2)  # 1044, 1054
    noise = NOISE.chunk(2)[0].repeat(2, 1, 1, 1)  # 1032, 1055
    noisy = _add_noise(abar, latents, noise, timesteps)  # 1060
    c = pairs.prompt_embeds.repeat(2, 1, 1)  # 1102
    return _dpo_loss(module, noisy, timesteps, c, noise, scale)  # target = noise (1106)


def test_diffusion_dpo_step_matches_official(monkeypatch):
    """Diffusion-DPO (SalesforceAIResearch/DiffusionDPO 5233e75, train.py 1016-1145).

    Forward noising with t and ε of the first half shared by w and l, the UNet told t, target ε,
    per-sample MSE, ``inside = -0.5·β·(model_diff - ref_diff)``, ``-logsigmoid(inside).mean()``.
    """
    module, pairs = _module(DiffusionDPO(beta=5000.0)), _pairs()
    loss, grad = _module_step(monkeypatch, module, pairs)
    ref_loss, ref_grad = _backward(module, _official_forward_pair_loss(module, pairs, -0.5 * 5000))
    assert_parity(loss, ref_loss, grad, ref_grad)


def test_sft_step_matches_official(monkeypatch):
    """Diffusion-DPO's ``--sft`` (DiffusionDPO train.py 828-836, 1022-1023, 1032-1060, 1120).

    The preferred image alone: B latents, ``randint`` of B timesteps and ``randn_like`` of B noises
    (no pair sharing), forward noising, target ε, ``F.mse_loss(..., reduction="mean")``.
    """
    module, pairs = _module(SFT()), _pairs()
    loss, grad = _module_step(monkeypatch, module, pairs)
    abar = _alphas_cumprod(module.policy.noise_scheduler.config)
    latents, timesteps, noise = pairs.latents_w, T2[:B], NOISE[:B]  # 1023, 1032, 1044
    noisy = _add_noise(abar, latents, noise, timesteps)  # 1060
    pred = _unet(module.policy.unet, noisy, timesteps, pairs.prompt_embeds)  # 1114
    ref_loss, ref_grad = _backward(module, F.mse_loss(pred, noise, reduction="mean"))
    assert_parity(loss, ref_loss, grad, ref_grad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_npo_step_matches_official(monkeypatch, prediction_type):
    """Diffusion-NPO (G-U-N/Diffusion-NPO a14f1db, DPO-DPO-NPO/train_sd15.py 677-692, 806-883).

    ``preprocess_train`` reverses the pair when ``label_0 == 1`` (688): the human loser comes
    first. ε of the first half repeated (817), ``randint(bsz).repeat(2)`` (821-824), ``add_noise``,
    target ε or ``get_velocity`` = sqrt(ā) ε - sqrt(1-ā) x0 (846-849), MSE over dims 1.. (854),
    the adapter-free UNet as reference under no_grad (863-878), ``logits = ref_diff -
    model_diff`` and ``-logsigmoid(β_d · logits).mean()`` with the SD1.5 launcher's β_d = 500
    (881-883): our default β = 1000 in the -0.5·β form.
    """
    module, pairs = _module(DiffusionNPO(), prediction_type=prediction_type), _pairs()
    loss, grad = _module_step(monkeypatch, module, pairs)
    abar = _alphas_cumprod(module.policy.noise_scheduler.config)
    latents = torch.cat([pairs.latents_l, pairs.latents_w])  # human loser first (688-690)
    noise = NOISE.chunk(2)[0].repeat(2, 1, 1, 1)  # 817
    timesteps = T2[:B].repeat(2)  # 821-824
    noisy = _add_noise(abar, latents, noise, timesteps)  # 827
    c = pairs.prompt_embeds.repeat(2, 1, 1)  # 835
    a = abar[timesteps].view(-1, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    model_losses = (_unet(module.policy.unet, noisy, timesteps, c) - target).pow(2)
    model_losses_w, model_losses_l = model_losses.mean(dim=[1, 2, 3]).chunk(2)  # 854-856
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        ref_loss = (_unet(module.reference_unet, noisy, timesteps, c) - target).pow(2)
        ref_losses_w, ref_losses_l = ref_loss.mean(dim=[1, 2, 3]).chunk(2)  # 869-873
        ref_diff = ref_losses_w - ref_losses_l
    logits = ref_diff - model_diff  # 881
    official = -F.logsigmoid(500 * logits).mean()  # 883, β_d = 500 (run_sd15.sh: --beta_dpo=500)
    ref_loss, ref_grad = _backward(module, official)
    assert_parity(loss, ref_loss, grad, ref_grad)


def test_smpo_forward_noising_step_matches_official(monkeypatch):
    """SmPO's loss on forward noising (``noising=ForwardNoising()``), smoothed labels.

    Noising as Diffusion-DPO (train.py 1016-1106 of SalesforceAIResearch/DiffusionDPO); the scale
    as JaydenLyh/SmPO 8922d54 train.py 1061: ``-0.5 · β · (2p - 1) · 10``. The official line
    reads ``probs[0]`` because its launchers use batch size 1 (examples/sd15.sh); at B = 2 the
    reference applies that line to each pair's own p.
    """
    pref_prob = (0.62, 0.71)
    module = _module(SmPO(beta=2000.0, gamma=10.0), noising=ForwardNoising())
    pairs = _pairs(pref_prob)
    loss, grad = _module_step(monkeypatch, module, pairs)
    scale = -0.5 * 2000 * (2 * torch.tensor(pref_prob, dtype=torch.float64) - 1) * 10
    ref_loss, ref_grad = _backward(module, _official_forward_pair_loss(module, pairs, scale))
    assert_parity(loss, ref_loss, grad, ref_grad)


def _official_inversion_loss(module, pairs, t: int, n: int, renoise: bool, eta: float, scale):
    """SmPO train.py 967-1064 / InPO train.py 958-1052 under diffusers 0.20.0 (module docstring).

    ``for τ in grid if τ < timesteps[0]``: the policy UNet is told τ at x; one inverse DDIM step
    τ → τ + Δ; SmPO (``renoise``) first evaluates the UNet again, told the same τ, at the
    tentative point and steps with the average (1003-1022); InPO (``eta``) adds
    ``0.1 · randn · sqrt(DDIMScheduler._get_variance(τ + Δ, τ))`` after the step (1007-1011).
    Then ``target = (x - sqrt(ā_t) x0) / sqrt(1 - ā_t)`` at the sampled t (SmPO 1025-1031) and
    the loss block with the UNets told the sampled t.
    """
    cfg = module.policy.noise_scheduler.config
    abar = _alphas_cumprod(cfg)
    assert cfg.get("timestep_spacing", "leading") == "leading"
    delta = cfg["num_train_timesteps"] // n
    grid = [k * delta + cfg.get("steps_offset", 0) for k in range(n)]  # set_timesteps, leading
    grid = [grid[-1], *grid[:-1]]  # np.roll(timesteps, 1)
    grid[0] = grid[1] - delta  # timesteps[0] = timesteps[1] - step_ratio
    initial = 1.0 if cfg.get("set_alpha_to_one", True) else float(abar[0])
    clip, clip_range = cfg.get("clip_sample", True), cfg.get("clip_sample_range", 1.0)

    def abar_at(level: int) -> float:
        return initial if level < 0 else float(abar[level])

    def inverse_step(eps: Tensor, tau: int, x: Tensor) -> Tensor:  # DDIMInverseScheduler.step
        a, a_next = abar_at(tau), abar_at(tau + delta)
        x0_hat = (x - (1 - a) ** 0.5 * eps) / a**0.5
        if clip:
            x0_hat = x0_hat.clamp(-clip_range, clip_range)
        return a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * eps

    latents = torch.cat([pairs.latents_w, pairs.latents_l])
    timesteps = torch.full((2 * B,), t)  # chunk(2)[0].repeat(2) of a draw where every t is t
    c = pairs.prompt_embeds.repeat(2, 1, 1)
    unet, z_source = module.policy.unet, torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        start_latents, noisy = latents.clone(), latents.clone()
        for tau in [g for g in grid if g < timesteps[0]]:
            told = torch.full((2 * B,), tau)
            eps = _unet(unet, noisy, told, c)
            if renoise:
                eps = (eps + _unet(unet, inverse_step(eps, tau, noisy), told, c)) / 2
            noisy = inverse_step(eps, tau, noisy)
            if eta:
                a_hi, a_lo = abar_at(tau + delta), abar_at(tau)  # _get_variance(prev_t, t)
                variance = (1 - a_lo) / (1 - a_hi) * (1 - a_hi / a_lo)
                z = torch.randn(noisy.shape, generator=z_source, dtype=noisy.dtype)
                noisy = noisy + eta * z * variance**0.5
    a = abar[timesteps[0]]
    target = (noisy - start_latents * a**0.5) / (1 - a) ** 0.5
    return _dpo_loss(module, noisy, timesteps, c, target, scale)


@pytest.mark.parametrize(
    ("t", "flags"),
    [(1, {}), (300, SD15), (900, CLIP), (250, {**SD15, **CLIP})],
    ids=["t1-only-the-negative-step", "t300-sd15-lands-401", "t900-clip-top", "t250-sd15-clip"],
)
def test_smpo_renoise_step_matches_official(monkeypatch, t, flags):
    """SmPO with its default ``ReNoiseInversion(5)`` (JaydenLyh/SmPO 8922d54, train.py 881,
    967-1064; grid of 5 as SD1.5): grid [-199, 1, 201, 401, 601], so t = 1 takes only the step
    from -199 (UNet told -199), t = 300 lands at 401 and t = 900 at 801. Smoothed labels, scale
    ``-0.5 · β · (2p - 1) · 10`` (1061) per pair (see the forward-noising test).
    """
    pref_prob = (0.55, 0.7)
    module, pairs = _module(SmPO(beta=2000.0, gamma=10.0), **flags), _pairs(pref_prob)
    loss, grad = _module_step(monkeypatch, module, pairs, torch.full((2 * B,), t))
    scale = -0.5 * 2000 * (2 * torch.tensor(pref_prob, dtype=torch.float64) - 1) * 10
    official = _official_inversion_loss(module, pairs, t, n=5, renoise=True, eta=0.0, scale=scale)
    ref_loss, ref_grad = _backward(module, official)
    assert_parity(loss, ref_loss, grad, ref_grad)


@pytest.mark.parametrize(
    ("t", "flags"),
    [(1, SD15), (250, {}), (950, CLIP), (480, SD15)],
    ids=["t1-sd15-negative-step-noise", "t250-lands-301", "t950-clip-top", "t480-sd15"],
)
def test_inpo_step_matches_official(monkeypatch, t, flags):
    """InPO with its default ``DDIMInversion(10, extra_noise=0.1)`` (JaydenLyh/InPO a9cfc4d,
    train.py 469-472, 875, 958-1052): grid [-99, 1, 101, ..., 801], plain inverse DDIM steps,
    after each ``+= 0.1 · randn · sqrt(_get_variance(τ + Δ, τ))``, the DDIM variance of the whole
    jump (zero for the step from -99 when ā there is 1; SD1.5's config makes it ā_0, so t = 1
    is noised too). Human labels, scale ``-0.5 · β`` (1049).

    The official z is ``torch.randn_like`` per step from the global RNG; ours comes from the
    step's generator, one draw of the inverted images' shape per step taken. The reference
    seeds a second generator like the one handed to the module and draws the same way: the
    draws are the same only if the module takes them, in order and shape, as the loop does.
    """
    module, pairs = _module(InPO(beta=2000.0), **flags), _pairs()
    loss, grad = _module_step(monkeypatch, module, pairs, torch.full((2 * B,), t))
    official = _official_inversion_loss(module, pairs, t, n=10, renoise=False, eta=0.1, scale=-1000)
    ref_loss, ref_grad = _backward(module, official)
    assert_parity(loss, ref_loss, grad, ref_grad)
