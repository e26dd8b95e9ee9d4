"""How an offline method turns a clean latent x0 into the noisy x_t it trains on, and the target.

Forward noising (Diffusion-DPO and most methods) draws ``x_t = sqrt(ā_t) x0 + sqrt(1-ā_t) ε``
and regresses onto ε (or v). InPO and SmPO instead reach x_t by *inverting* x0 with the current
policy along a coarse DDIM grid (METHODS §4.2, §5), and regress onto the per-image "noise"
``(x_t - sqrt(ā_t) x0) / sqrt(1-ā_t)`` that the inversion implies. Strategies are independent of the
objective: any offline objective can use any of them (``model.init_args.noising`` in YAML).

Inversion follows the official scripts as they ran under their pinned diffusers 0.20.0
(:mod:`lightning_pref.models.inversion`): on SD1.5's grid of 5 the steps are -199→1, 1→201, ...;
every step whose start τ is below the sampled t is taken, so x_t lands at the first grid level at or
above t (at most the top one), and is then trained as if at t: the target uses ā_t and the denoiser
is told t. The UNet runs without CFG, under no grad, with the (possibly dropped-out) training
caption. A batch may mix timesteps: each image stops at its own level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.models.inversion import InversionGrid, Landing, invert

__all__ = [
    "DDIMInversion",
    "FlowInversion",
    "ForwardNoising",
    "NoisedLatents",
    "NoisingStrategy",
    "ReNoiseInversion",
]


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


class _Inversion(NoisingStrategy):
    """Shared part of the inversion strategies: run :func:`invert`, then derive the target."""

    renoise: bool = False

    def __init__(
        self, num_steps: int, extra_noise: float, snap_to_grid: bool, landing: Landing
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.extra_noise = extra_noise
        self.snap_to_grid = snap_to_grid
        self.landing = landing
        self._grid: tuple[int, InversionGrid] | None = None

    def grid_for(self, policy: torch.nn.Module) -> InversionGrid:
        """The inversion grid on ``policy``'s schedule (built once per policy)."""
        if self._grid is None or self._grid[0] != id(policy):
            grid = InversionGrid.from_config(
                policy.noise_scheduler.config, self.num_steps, self.landing
            )
            self._grid = (id(policy), grid)
        return self._grid[1]

    def __call__(self, policy, x0, timesteps, noise, prompt_embeds, generator=None):  # noqa: D102
        grid = self.grid_for(policy)
        x_t = invert(
            policy,
            grid,
            x0,
            timesteps,
            prompt_embeds,
            renoise=self.renoise,
            extra_noise=self.extra_noise,
            generator=generator,
        )
        used = grid.landing_levels(timesteps) if self.snap_to_grid else timesteps
        a = policy.alphas_cumprod[used].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # [N, C, h, w] per-image noise
        target = policy.training_target(x0, eps, used)
        return NoisedLatents(x_t, target, used if self.snap_to_grid else None)


class DDIMInversion(_Inversion):
    """InPO's noising: DDIM inversion with the policy on a coarse grid, plus a noise term.

    As JaydenLyh/InPO train.py (lines 995-1013): after each inversion step τ → τ+Δ it adds
    ``η · z · sqrt(var)`` with ``var = DDIMScheduler._get_variance(τ+Δ, τ)``, the DDIM variance of
    the whole jump (:meth:`InversionGrid.jump_std`; SD1.5, 401→501: std 0.528).

    Args:
        num_steps: grid size (InPO: 10 for SD1.5 and SDXL).
        extra_noise: η of the noise term (InPO: 0.1); 0 = deterministic.
        snap_to_grid: train at the level where x_t landed (its ā and its t for the denoiser)
            instead of at the sampled t as the official code does. Ours, not official.
        landing: ``at_or_above`` (diffusers 0.20.0, official) or ``below`` (diffusers 0.42's
            ``DDIMInverseScheduler``; not official, kept for ablations).
    """

    def __init__(
        self,
        num_steps: int = 10,
        extra_noise: float = 0.1,
        snap_to_grid: bool = False,
        landing: Landing = "at_or_above",
    ) -> None:
        super().__init__(num_steps, extra_noise, snap_to_grid, landing)


class ReNoiseInversion(_Inversion):
    """SmPO's noising: DDIM inversion where each step averages two noise estimates (ReNoise).

    As JaydenLyh/SmPO train.py (lines 1002-1027). Costs two extra UNet passes per step taken.

    Args:
        num_steps: grid size (SmPO's code: 5 for SD1.5, 10 for SDXL; the paper says 9).
        snap_to_grid: as :class:`DDIMInversion`; not official.
        landing: as :class:`DDIMInversion`.
    """

    renoise = True

    def __init__(
        self, num_steps: int = 5, snap_to_grid: bool = False, landing: Landing = "at_or_above"
    ) -> None:
        super().__init__(num_steps, 0.0, snap_to_grid, landing)


class FlowInversion(NoisingStrategy):
    """The flow-matching equivalent of SmPO's and InPO's inversion, for a :class:`FlowPolicy`.

    No paper or official code inverts a flow model for these methods; the choices are ours,
    mirroring the DDIM strategies above. The grid is ``n`` levels on the training table,
    ``g_k = k·Δ − 1`` (Δ = 1000 / n; σ at level −1 is 0, the clean image), and the Euler ODE is
    run backwards, ``x ← x + (σ(g_{k+1}) − σ(g_k))·v(x, σ(g_k))``, taking every step whose
    ``g_k < t``: x_t lands at the first grid level at or above t, as the official DDIM inversion
    does, and is trained as if at t. ``renoise`` (SmPO) averages a second velocity at the tentative
    point, told the same level; ``extra_noise`` η (InPO) adds ``η·z·sqrt(σ'² − σ²)`` per step (the
    noise the forward process adds between the levels). The target is the velocity implied by the
    inversion, ``ε̂ − x0`` with ``ε̂ = (x_t − (1 − σ_t) x0) / σ_t``.

    Args:
        num_steps: grid size n (SmPO's SD1.5 grid: 5; InPO's: 10).
        renoise: SmPO's averaged second estimate.
        extra_noise: InPO's η (0.1); 0 = deterministic.
    """

    def __init__(self, num_steps: int = 5, renoise: bool = False, extra_noise: float = 0.0) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps, self.renoise, self.extra_noise = num_steps, renoise, extra_noise

    def levels(self, num_train_timesteps: int) -> list[int]:
        """The grid ``[-1, Δ-1, 2Δ-1, ..., 999]`` (n + 1 levels)."""
        stride = num_train_timesteps // self.num_steps
        return [k * stride - 1 for k in range(self.num_steps)] + [num_train_timesteps - 1]

    @torch.no_grad()
    def __call__(self, policy, x0, timesteps, noise, prompt_embeds, generator=None):  # noqa: D102
        if not getattr(policy, "is_flow", False):
            raise ConfigError("FlowInversion needs a flow policy (FlowPolicy or FluxPolicy)")
        levels = self.levels(policy.num_train_timesteps)
        sigma = policy.sigmas
        x = x0.clone()
        for lo, hi in zip(levels[:-1], levels[1:], strict=True):
            active = (timesteps > lo).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            s_lo = 0.0 if lo < 0 else float(sigma[lo])
            s_hi = float(sigma[hi])
            x_a, emb = x[active], prompt_embeds[active]
            told = torch.full((active.numel(),), s_lo, device=x.device)
            v = policy.velocity(policy.unet, x_a, told, emb)
            if self.renoise:
                v = (v + policy.velocity(policy.unet, x_a + (s_hi - s_lo) * v, told, emb)) / 2
            x_a = x_a + (s_hi - s_lo) * v
            if self.extra_noise:
                z = torch.randn(x_a.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_a = x_a + self.extra_noise * max(s_hi**2 - s_lo**2, 0.0) ** 0.5 * z
            x[active] = x_a.to(x.dtype)
        s_t = sigma[timesteps].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        eps = (x - (1 - s_t) * x0) / s_t  # [N, C, h, w] the noise the inversion implies
        return NoisedLatents(x, eps - x0)
