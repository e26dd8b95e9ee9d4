"""DDIM sampling with classifier-free guidance and transition log-probabilities.

One implementation serves evaluation, pair generation and the on-policy methods. The step follows
Song et al. (DDIM, Eq. 12) as the SPO code's ``ddim_with_logprob`` does (METHODS §2.3): with
``x0 = (x_t - sqrt(1-ā_t) ε) / sqrt(ā_t)`` and
``σ_t = η · sqrt((1-ā_prev)/(1-ā_t)) · sqrt(1 - ā_t/ā_prev)``, the posterior mean is
``sqrt(ā_prev) x0 + sqrt(1 - ā_prev - σ_t²) ε`` and ``x_prev = mean + σ_t z``. Timesteps use SD's
"leading" spacing with offset 1: 20 steps give 951, 901, ..., 1.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.objectives.functional import to_epsilon_and_x0, upcast

__all__ = [
    "DDIMStep",
    "cfg_predict",
    "ddim_step",
    "ddim_timesteps",
    "derive_seed",
    "flow_euler",
    "flow_sde_step",
    "gaussian_logprob",
    "sample_images",
    "sample_plan",
    "sample_seeded",
    "transition",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM transition x_t → x_{t-1}."""

    prev_sample: Tensor  # [N, C, h, w] x_{t-1}
    mean: Tensor  # [N, C, h, w] posterior mean μ_θ(x_t)
    std: Tensor  # [N] σ_t (0 for η = 0)
    pred_x0: Tensor  # [N, C, h, w] x̂0 predicted at x_t
    eps: Tensor  # [N, C, h, w] ε̂ at x_t


def ddim_timesteps(num_train_timesteps: int, num_steps: int, offset: int = 1) -> list[int]:
    """Descending "leading" timesteps: ``[k·(T//n) + offset for k in n-1..0]``."""
    ratio = num_train_timesteps // num_steps
    return [k * ratio + offset for k in reversed(range(num_steps))]


def _alpha(alphas_cumprod: Tensor, t: Tensor, final: float) -> Tensor:
    """ā at integer timesteps ``t`` ([N]); ā for t < 0 is ``final`` (the last step)."""
    safe = alphas_cumprod[t.clamp(min=0)]
    return torch.where(t >= 0, safe, torch.full_like(safe, final))


def ddim_step(
    policy: DiffusionPolicy,
    model_out: Tensor,
    x_t: Tensor,
    t: Tensor,
    t_prev: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
) -> DDIMStep:
    """One DDIM step; pass ``prev_sample`` to evaluate a given x_{t-1} instead of drawing one."""
    final = float(policy.alphas_cumprod[0])  # SD: set_alpha_to_one=False
    shape = (-1, *[1] * (x_t.dim() - 1))
    a_t = _alpha(policy.alphas_cumprod, t, final).view(shape)
    a_prev = _alpha(policy.alphas_cumprod, t_prev, final).view(shape)
    eps, x0 = to_epsilon_and_x0(upcast(model_out), upcast(x_t), a_t, policy.prediction_type)
    config = policy.noise_scheduler.config
    if config.get("clip_sample", False):  # pixel-space models: keep x̂0 in the image range
        bound = float(config.get("clip_sample_range", 1.0))
        x0 = x0.clamp(-bound, bound)
        eps = (upcast(x_t) - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var.clamp(min=0).sqrt()  # [N, 1, 1, 1]
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    if prev_sample is None:
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=mean.dtype)
        prev_sample = mean + std * noise
    return DDIMStep(prev_sample, mean, std.flatten(), x0, eps)


def flow_sde_step(
    velocity: Tensor,
    x_t: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    sigma_max: float,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
) -> DDIMStep:
    """One step of Flow-GRPO's SDE for a rectified-flow model, σ → σ_next < σ (arXiv 2505.05470).

    With ``Δ = σ_next − σ < 0`` and ``s_σ = η·sqrt(σ / (1 − σ))`` (σ = 1 replaced by
    ``sigma_max`` in the denominator, the sampler's second level), the mean is
    ``x (1 + s_σ²Δ / (2σ)) + v (1 + s_σ²(1 − σ) / (2σ)) Δ`` (the Euler step plus the score
    correction; ``s_σ = 0`` gives the ODE) and the step's std ``s_σ·sqrt(−Δ)``; ``x_next = mean +
    std·z``. Computed in float32. :func:`gaussian_logprob` of the result is its log-density, the
    quantity SPO/TailorPO-style step pools compare. Returns x̂0 ``x − σv`` and ε̂ ``x + (1 − σ)v``.

    Args:
        velocity: the model's velocity ``[N, C, h, w]`` at ``x_t``.
        x_t: the current sample.
        sigma: its noise level ``[N]``.
        sigma_next: the next level ``[N]``.
        sigma_max: the sampler's largest level below 1.
        noise_level: η (Flow-GRPO: 0.7).
        generator: draws ``z``.
        prev_sample: evaluate this ``x_next`` instead of drawing one.
    """
    v, x = upcast(velocity), upcast(x_t)
    shape = (-1, *[1] * (x.dim() - 1))
    s, s_next = sigma.float().view(shape), sigma_next.float().view(shape)
    dt = s_next - s
    std_sigma = torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s)))
    std_sigma = std_sigma * noise_level
    mean = x * (1 + std_sigma**2 / (2 * s) * dt) + v * (1 + std_sigma**2 * (1 - s) / (2 * s)) * dt
    std = std_sigma * torch.sqrt(-dt)  # [N, 1, 1, 1]
    if prev_sample is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=mean.dtype)
        prev_sample = mean + std * noise
    return DDIMStep(prev_sample, mean, std.flatten(), x - s * v, x + (1 - s) * v)


def transition(
    policy: DiffusionPolicy,
    model_out: Tensor,
    x_t: Tensor,
    t: Tensor,
    t_prev: Tensor,
    eta: float,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
) -> DDIMStep:
    """One stochastic sampler step between integer levels ``t`` → ``t_prev`` ``[N]``.

    DDIM with η for a UNet policy; Flow-GRPO's SDE (:func:`flow_sde_step`, η its noise level) for
    a flow policy, on its training sigma table (σ(t_prev < 0) = 0). The step pools and their
    log-probabilities use this one function, so sampling and training agree.
    """
    if not policy.is_flow:
        return ddim_step(policy, model_out, x_t, t, t_prev, eta, generator, prev_sample)
    sigmas = policy.sigmas
    sigma = sigmas[t]
    sigma_prev = torch.where(t_prev >= 0, sigmas[t_prev.clamp(min=0)], torch.zeros_like(sigma))
    sigma_max = float(sigmas[-2])  # the highest level below 1 (used only at σ = 1)
    return flow_sde_step(model_out, x_t, sigma, sigma_prev, sigma_max, eta, generator, prev_sample)


def gaussian_logprob(x_prev: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Log-density N(x_prev; mean, std²) per sample, MEAN-reduced over C, h, w as in SPO.

    ``-(x-μ)²/(2σ²) - log σ - log √(2π)`` averaged over every non-batch element; ``std`` is [N].
    """
    std = std.view(-1, *[1] * (mean.dim() - 1)).to(mean.dtype)
    log_density = (
        -((x_prev.to(mean.dtype) - mean) ** 2) / (2 * std**2)
        - std.log()
        - math.log(math.sqrt(2 * math.pi))
    )
    return log_density.flatten(1).mean(dim=1)


def cfg_predict(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    uncond_denoiser: Denoiser | None = None,
) -> Tensor:
    """``uncond + w·(cond − uncond)`` with both branches in one batched forward.

    With ``uncond_denoiser`` (negative guidance, Diffusion-NPO / Self-NPO) the unconditional
    branch comes from that network instead, ``ε_neg(x_t, "") + w·(ε(x_t, c) − ε_neg(x_t, ""))``,
    in two separate forwards. Batching changes the float summation order, so the two paths agree
    to ~1e-6, not bit for bit, even when both networks are the same.
    """
    if guidance_scale == 1.0:
        return denoiser(x_t, t, cond)
    if uncond_denoiser is not None:
        out_c, out_u = denoiser(x_t, t, cond), uncond_denoiser(x_t, t, uncond)
        return out_u + guidance_scale * (out_c - out_u)
    out = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]))
    out_u, out_c = out.chunk(2)
    return out_u + guidance_scale * (out_c - out_u)


@torch.inference_mode()
def sample_images(
    policy: DiffusionPolicy,
    captions: Sequence[str],
    generator: torch.Generator,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    denoiser: Denoiser | None = None,
    uncond_denoiser: Denoiser | None = None,
    latent_shape: tuple[int, int, int] | None = None,
) -> Tensor:
    """Sample images in [-1, 1] ``[N, 3, H, W]`` for ``captions`` with DDIM + CFG.

    Args:
        policy: supplies the noise schedule, text encoder, VAE and (by default) the denoiser.
        captions: one caption per image.
        generator: seeds x_T and the η-noise; same seed, same images.
        num_steps: DDIM steps.
        guidance_scale: CFG weight (1.0 = no guidance).
        eta: 0 = deterministic DDIM, 1 = DDPM-like.
        denoiser: ``(x_t, t, embeds) -> prediction``; default the policy's UNet.
        uncond_denoiser: a different network for the unconditional branch (negative guidance,
            e.g. :class:`~lightning_pref.models.negative.NegativeGuidance`); None = ordinary CFG.
        latent_shape: ``(C, h, w)``; default the UNet's channels and sample size.
    """
    device = policy.unet.device
    cond = policy.encode_prompt(list(captions))  # [N, L, D]
    uncond = policy.encode_prompt([""] * len(captions))
    c, h, w = latent_shape or policy.latent_shape
    x = torch.randn((len(captions), c, h, w), generator=generator, device=device)
    if policy.is_flow:
        _check_flow_sampling(eta, denoiser, uncond_denoiser)
        return policy.decode_latents(flow_euler(policy, x, cond, uncond, num_steps, guidance_scale))
    denoiser = denoiser or policy
    steps = ddim_timesteps(policy.num_train_timesteps, num_steps)
    ratio = policy.num_train_timesteps // num_steps
    for t_int in steps:
        t = torch.full((len(captions),), t_int, device=device, dtype=torch.long)
        out = cfg_predict(denoiser, x, t, cond, uncond, guidance_scale, uncond_denoiser)
        x = ddim_step(policy, out, x, t, t - ratio, eta, generator).prev_sample
    return policy.decode_latents(x)


def _check_flow_sampling(eta: float, denoiser: object, uncond_denoiser: object) -> None:
    if eta != 0.0 or denoiser is not None or uncond_denoiser is not None:
        raise ConfigError(
            "a flow policy samples with the Euler ODE only: eta 0, its own transformer, no "
            "negative-model guidance"
        )


def flow_euler(
    policy: DiffusionPolicy,
    x: Tensor,
    cond: Tensor,
    uncond: Tensor,
    num_steps: int,
    guidance_scale: float,
) -> Tensor:
    """The Euler ODE of a flow policy from ``x`` (pure noise ``[N, C, h, w]``) to latents.

    As ``StableDiffusion3Pipeline``: ``x ← x + (σ_next − σ)·v``, ``v`` from CFG (unconditional
    first in one batched forward), on the pipeline's sigmas (``policy.sampling_sigmas``); as
    ``FluxPipeline`` for FLUX: no CFG, ``guidance_scale`` into the guidance embedding.
    """
    sigmas = policy.sampling_sigmas(num_steps, tuple(x.shape[-2:]))  # [num_steps + 1]

    def velocity(x_t: Tensor, sigma: Tensor, embeds: Tensor) -> Tensor:
        return policy.velocity(policy.unet, x_t, sigma, embeds)

    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        s = sigma.expand(x.shape[0])
        if policy.uses_cfg:
            v = cfg_predict(velocity, x, s, cond, uncond, guidance_scale)
        else:  # FLUX: no unconditional branch; the guidance goes into its embedding
            v = policy.velocity(policy.unet, x, s, cond, guidance=guidance_scale)
        x = (x.float() + (sigma_next - sigma) * v.float()).to(v.dtype)
    return x


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed hashed from ``seed`` and ``keys`` (nearby keys give unrelated streams)."""
    key = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def sample_plan(prompts: Sequence[str], num_samples: int, seed: int) -> tuple[list[str], list[int]]:
    """Captions (``prompts`` cycled) and per-sample seeds ``derive_seed(seed, "sample", i)``."""
    if not prompts:
        raise ConfigError("no prompts to evaluate on")
    captions = [prompts[i % len(prompts)] for i in range(num_samples)]
    return captions, [derive_seed(seed, "sample", i) for i in range(num_samples)]


@torch.no_grad()
def sample_seeded(
    policy: DiffusionPolicy,
    captions: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = 10,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    uncond_denoiser: Denoiser | None = None,
) -> Tensor:
    """DDIM + CFG as :func:`sample_images`, with one generator per image.

    Image ``i`` draws x_T and every step's noise from a generator seeded with ``seeds[i]`` in the
    order ``sample_images`` draws them, so one caption gives exactly ``sample_images`` with that
    seed, and an image does not depend on the rest of its batch. ``uncond_denoiser`` replaces the
    unconditional branch (negative-model guidance, as in ``sample_images``). Returns
    ``[N, 3, H, W]``.
    """
    device = policy.unet.device
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    shape = (1, *policy.latent_shape)

    def draw() -> Tensor:
        return torch.cat([torch.randn(shape, generator=g, device=device) for g in gens])

    cond = policy.encode_prompt(list(captions))  # [N, L, D]
    uncond = policy.encode_prompt([""] * len(captions))
    x = draw()  # [N, C, h, w] x_T
    if policy.is_flow:
        _check_flow_sampling(eta, None, uncond_denoiser)
        return policy.decode_latents(flow_euler(policy, x, cond, uncond, num_steps, guidance_scale))
    ratio = policy.num_train_timesteps // num_steps
    for t_int in ddim_timesteps(policy.num_train_timesteps, num_steps):
        t = torch.full((len(captions),), t_int, device=device, dtype=torch.long)
        out = cfg_predict(policy, x, t, cond, uncond, guidance_scale, uncond_denoiser)
        step = ddim_step(policy, out, x, t, t - ratio, eta, prev_sample=x)  # mean, std only
        x = step.mean + step.std.view(-1, 1, 1, 1) * draw()  # [N, C, h, w] x_{t-1}
    return policy.decode_latents(x)
