"""How an offline method turns a clean latent x0 into the noisy x_t it trains on, and the target.

Forward noising (Diffusion-DPO and most methods) draws ``x_t = sqrt(ā_t) x0 + sqrt(1-ā_t) ε``
and regresses onto ε (or v). InPO and SmPO instead reach x_t by *inverting* x0 with the current
policy along a coarse DDIM grid (METHODS §4.2, §5), and regress onto the per-image "noise"
``(x_t - sqrt(ā_t) x0) / sqrt(1-ā_t)`` that the inversion implies. Strategies are independent of the
objective: any offline objective can use any of them (``model.init_args.noising`` in YAML).

Inversion follows the official scripts: a ``diffusers.DDIMInverseScheduler`` built from the
model's scheduler config, ``set_timesteps(num_steps)`` (grid 1, 201, ..., 801 for 5 steps with
SD's ``steps_offset=1``), and every grid point τ < t taken, so x_t sits at the largest grid point
below t, not at t; the target still uses ā_t. The UNet runs without CFG, under no grad, with the
(possibly dropped-out) training caption. A batch may mix timesteps: each image stops at its own t.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMInverseScheduler
from torch import Tensor

__all__ = [
    "DDIMInversion",
    "ForwardNoising",
    "NoisedLatents",
    "NoisingStrategy",
    "ReNoiseInversion",
    "invert",
    "last_grid_point_below",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``denoiser(x [N, C, h, w], timesteps [N], prompt_embeds [N, L, D]) -> ε or v [N, C, h, w]``."""


@dataclass(frozen=True)
class NoisedLatents:
    """What the denoiser trains on."""

    x_t: Tensor  # [N, C, h, w] noisy input
    target: Tensor  # [N, C, h, w] ε or v regression target
    timesteps: Tensor | None = None  # [N] t to give the denoiser; None: the sampled t


class NoisingStrategy(ABC):
    """Maps clean latents, timesteps and a noise draw to ``(x_t, target)``."""

    @abstractmethod
    def __call__(
        self,
        policy: torch.nn.Module,
        x0: Tensor,
        timesteps: Tensor,
        noise: Tensor,
        prompt_embeds: Tensor,
        generator: torch.Generator | None = None,
    ) -> NoisedLatents:
        """Noise ``x0`` ([N, C, h, w]) to ``timesteps`` ([N]).

        Args:
            policy: the :class:`~lightning_pref.models.policy.DiffusionPolicy` being trained; its
                scheduler, and for inversion its UNet, are used.
            x0: clean latents.
            timesteps: integer training timesteps t.
            noise: a standard-normal draw shaped like ``x0`` (forward noising uses it; inversion
                ignores it).
            prompt_embeds: ``[N, L, D]`` text conditioning for inversion.
            generator: for the small extra noise of InPO's inversion.
        """


class ForwardNoising(NoisingStrategy):
    """The closed-form forward process, ``x_t = sqrt(ā_t) x0 + sqrt(1-ā_t) ε``; target ε or v."""

    def __call__(self, policy, x0, timesteps, noise, prompt_embeds, generator=None):  # noqa: D102
        x_t = policy.add_noise(x0, noise, timesteps)
        return NoisedLatents(x_t, policy.training_target(x0, noise, timesteps))


def _inverse_scheduler(policy: torch.nn.Module, num_steps: int) -> DDIMInverseScheduler:
    """A DDIM inverse scheduler with the policy's schedule, ``num_steps`` grid points."""
    scheduler = DDIMInverseScheduler.from_config(policy.noise_scheduler.config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def last_grid_point_below(grid: Tensor, timesteps: Tensor) -> Tensor:
    """Per image, the largest grid point < t (where :func:`invert` stops); t itself if none is."""
    grid = grid.to(timesteps.device)
    below = grid.view(1, -1) < timesteps.view(-1, 1)  # [N, G]
    last = torch.where(below, grid.view(1, -1), torch.full_like(below, -1, dtype=grid.dtype))
    top = last.max(dim=1).values  # [N]
    return torch.where(top >= 0, top, timesteps)


def _posterior_std(alphas_cumprod: Tensor, step: int) -> float:
    """The square root of the one-step DDPM posterior variance at ``step``.

    ``β̃_s = (1-ā_{s-1}) / (1-ā_s) · (1 - ā_s/ā_{s-1})`` (ā_{-1} = 1), clamped to ≥ 1e-20, which is
    what InPO's ``noise_scheduler._get_variance(prev_t, t)`` evaluates on the training
    DDPMScheduler (its second argument is ignored for ``fixed_small`` variance).
    """
    a = float(alphas_cumprod[step])
    a_prev = float(alphas_cumprod[step - 1]) if step >= 1 else 1.0
    return max((1 - a_prev) / (1 - a) * (1 - a / a_prev), 1e-20) ** 0.5


@torch.no_grad()
def invert(
    denoiser: Denoiser,
    scheduler: DDIMInverseScheduler,
    x0: Tensor,
    timesteps: Tensor,
    prompt_embeds: Tensor,
    renoise: bool = False,
    extra_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Invert ``x0`` along ``scheduler.timesteps``, each image up to the last grid point < its t.

    Per grid point τ (ascending): ``e1 = denoiser(x, τ)``; plain DDIM takes
    ``x ← inv.step(e1, τ, x)``. With ``renoise`` (SmPO) a second estimate at the tentative point,
    ``e2 = denoiser(inv.step(e1, τ, x), τ)``, is averaged: ``x ← inv.step((e1+e2)/2, τ, x)``.
    With ``extra_noise`` = η (InPO, 0.1) each step adds ``η · z · sqrt(β̃_{τ+Δ})`` (see
    :func:`_posterior_std`; τ+Δ is clamped to T-1).

    Args:
        denoiser: the model, called on the images still being inverted.
        scheduler: a DDIM inverse scheduler after ``set_timesteps``.
        x0: ``[N, C, h, w]`` clean latents.
        timesteps: ``[N]`` target t per image.
        prompt_embeds: ``[N, L, D]``.
        renoise: average a second noise estimate per step (ReNoise, one iteration).
        extra_noise: η of InPO's noise term; 0 for none.
        generator: for the extra noise.

    Returns:
        ``[N, C, h, w]`` inverted latents (x0 itself where t ≤ the first grid point).
    """
    x = x0.clone()
    num_train = scheduler.config.num_train_timesteps
    stride = num_train // scheduler.num_inference_steps
    for tau in scheduler.timesteps.tolist():
        active = (timesteps > tau).nonzero().squeeze(1)  # [n] images that go past τ
        if active.numel() == 0:
            break
        x_a, emb = x[active], prompt_embeds[active]
        tau_n = torch.full((active.numel(),), tau, device=x.device, dtype=torch.long)
        eps = denoiser(x_a, tau_n, emb)
        if renoise:
            x_tmp = scheduler.step(eps, tau, x_a).prev_sample
            eps = (eps + denoiser(x_tmp, tau_n, emb)) / 2
        x_a = scheduler.step(eps, tau, x_a).prev_sample
        if extra_noise:
            std = _posterior_std(scheduler.alphas_cumprod, min(tau + stride, num_train - 1))
            z = torch.randn(x_a.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_a = x_a + extra_noise * std * z
        x[active] = x_a.to(x.dtype)
    return x


class _Inversion(NoisingStrategy):
    """Shared part of the inversion strategies: run :func:`invert`, then derive the target."""

    renoise: bool = False

    def __init__(self, num_steps: int, extra_noise: float, snap_to_grid: bool = False) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.extra_noise = extra_noise
        self.snap_to_grid = snap_to_grid
        self._scheduler: tuple[int, DDIMInverseScheduler] | None = None

    def scheduler_for(self, policy: torch.nn.Module) -> DDIMInverseScheduler:
        """The inverse scheduler for ``policy`` (built once per policy)."""
        if self._scheduler is None or self._scheduler[0] != id(policy):
            self._scheduler = (id(policy), _inverse_scheduler(policy, self.num_steps))
        return self._scheduler[1]

    def __call__(self, policy, x0, timesteps, noise, prompt_embeds, generator=None):  # noqa: D102
        scheduler = self.scheduler_for(policy)
        x_t = invert(
            policy,
            scheduler,
            x0,
            timesteps,
            prompt_embeds,
            renoise=self.renoise,
            extra_noise=self.extra_noise,
            generator=generator,
        )
        used = timesteps
        if self.snap_to_grid:
            used = last_grid_point_below(scheduler.timesteps, timesteps)
        a = policy.alphas_cumprod[used].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # [N, C, h, w] per-image noise
        target = policy.training_target(x0, eps, used)
        return NoisedLatents(x_t, target, used if self.snap_to_grid else None)


class DDIMInversion(_Inversion):
    """InPO's noising: DDIM inversion with the policy on a coarse grid, plus a small noise term.

    Args:
        num_steps: grid size of the inverse scheduler (InPO: 10 for SD1.5 and SDXL).
        extra_noise: η of the added ``η · z · sqrt(β̃)`` per step (InPO: 0.1); 0 = deterministic.
        snap_to_grid: train at the grid point where the inversion stopped (its ā and its t for
            the denoiser) instead of at the sampled t, as the official code does. Not official.
    """

    def __init__(
        self, num_steps: int = 10, extra_noise: float = 0.1, snap_to_grid: bool = False
    ) -> None:
        super().__init__(num_steps, extra_noise, snap_to_grid)


class ReNoiseInversion(_Inversion):
    """SmPO's noising: DDIM inversion where each step averages two noise estimates (ReNoise).

    Costs two extra UNet passes per grid point below t.

    Args:
        num_steps: grid size (SmPO's code: 5 for SD1.5, 10 for SDXL; the paper says 9).
        snap_to_grid: as :class:`DDIMInversion`; not official.
    """

    renoise = True

    def __init__(self, num_steps: int = 5, snap_to_grid: bool = False) -> None:
        super().__init__(num_steps, 0.0, snap_to_grid)
