"""DDIM inversion exactly as the official SmPO and InPO scripts ran it (diffusers 0.20.0).

Both official repositories pin ``diffusers==0.20.0`` (their requirements.txt), and their training
loops lean on what that version's ``DDIMInverseScheduler`` means; later versions changed it. So the
grid, each step and the landing level are computed here from the schedule, whatever diffusers is
installed (METHODS §4.2, §5).

diffusers 0.20.0, for ``n`` inversion steps on a schedule of ``T`` training steps, Δ = T // n:

- ``set_timesteps(n)`` builds the forward grid (``leading``: ``k·Δ + steps_offset``, k = 0..n-1;
  ``trailing``: ``round(T - k·T/n) - 1`` ascending), then ``np.roll``s it by one and sets the first
  entry to ``grid[1] - Δ``. SD1.5 (``steps_offset`` 1), n = 5: **[-199, 1, 201, 401, 601]**;
  n = 10: [-99, 1, 101, ..., 801].
- ``step(ε, τ, x)`` moves x from level τ to level **τ + Δ**:
  ``x̂0 = (x - sqrt(1-ā_τ) ε) / sqrt(ā_τ)`` (clamped to ±``clip_sample_range`` when the config's
  ``clip_sample`` is on),
  ``x' = sqrt(ā_{τ+Δ}) x̂0 + sqrt(1-ā_{τ+Δ}) ε``, with ā at a negative level = the initial ā (1 when
  ``set_alpha_to_one``, the scheduler's default; ā_0 otherwise, as in SD's config).
- The official loop takes every grid point τ < t (t the sampled training timestep), calls the UNet
  at (x, τ) and steps. So x_t **lands at level max{τ < t} + Δ**: the first forward-grid level at or
  above t, and at most the last one (801 for SD1.5 at n = 5). It is then trained *as if at t*
  (ā_t in the target, t for the denoiser). t = 300, n = 5: steps -199→1, 1→201, 201→401; lands
  at 401.

diffusers 0.42 (``landing="below"``, not what the papers ran) drops the roll (grid 1, 201, ..., 801)
and its ``step(ε, τ, x)`` moves from τ - Δ to τ with the UNet told τ: the same loop then stops one
grid step lower, at the last grid point *below* t. On MiniPick that placement trains against the
preference (issue 19: DPO-gradient cosine -0.70 to -0.85 for t in [202, 802)), so no shipped config
uses it; it is kept for that ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_pref.errors import ConfigError

__all__ = ["InversionGrid", "InversionStep", "Landing", "invert"]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``denoiser(x [N, C, h, w], timesteps [N], prompt_embeds [N, L, D]) -> ε or v [N, C, h, w]``."""

Landing = Literal["at_or_above", "below"]


@dataclass(frozen=True)
class InversionStep:
    """One inversion step: x moves from level ``start`` to level ``end``; the UNet is told ``told``.

    The step is taken by the images whose t is above ``gate`` (the official loop's ``τ < t``).
    """

    gate: int
    start: int
    end: int
    told: int


@dataclass(frozen=True)
class InversionGrid:
    """The inversion grid and step arithmetic of diffusers 0.20.0's ``DDIMInverseScheduler``.

    Build it with :meth:`from_config` from the policy's scheduler config.
    """

    steps: tuple[InversionStep, ...]
    alphas_cumprod: Tensor  # [T] float64
    initial_alpha_cumprod: float  # ā used at negative levels
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], num_steps: int, landing: Landing = "at_or_above"
    ) -> InversionGrid:
        """The grid for ``num_steps`` inversion steps on the schedule in ``config``.

        Args:
            config: a diffusers scheduler config (``beta_*``, ``num_train_timesteps``,
                ``steps_offset``, ``timestep_spacing``, ``set_alpha_to_one``, ``clip_sample``, ...).
            num_steps: n, the number of inversion grid points.
            landing: ``at_or_above`` (diffusers 0.20.0, the official runs) or ``below`` (0.42).
        """
        total = int(config.get("num_train_timesteps", 1000))
        if not 1 <= num_steps <= total:
            raise ConfigError(f"num_steps must be in [1, {total}], got {num_steps}")
        alphas = _alphas_cumprod(config)
        forward = _forward_grid(config, total, num_steps)  # ascending
        stride = total // num_steps
        if landing == "at_or_above":  # 0.20.0: roll by one, new first = old first - Δ; τ → τ + Δ
            if num_steps < 2:
                raise ConfigError("diffusers 0.20.0's inversion grid needs num_steps >= 2")
            rolled = [forward[0] - stride, *forward[:-1]]
            steps = tuple(InversionStep(tau, tau, tau + stride, tau) for tau in rolled)
        elif landing == "below":  # 0.42: no roll; τ - Δ → τ, UNet at τ
            steps = tuple(InversionStep(tau, tau - stride, tau, tau) for tau in forward)
        else:
            raise ConfigError(f"landing must be 'at_or_above' or 'below', got {landing!r}")
        initial = 1.0 if config.get("set_alpha_to_one", True) else float(alphas[0])
        return cls(
            steps=steps,
            alphas_cumprod=alphas,
            initial_alpha_cumprod=initial,
            prediction_type=str(config.get("prediction_type", "epsilon")),
            clip_sample=bool(config.get("clip_sample", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        )

    @property
    def timesteps(self) -> list[int]:
        """The grid as the official loop iterates it (0.20.0: ``[-199, 1, 201, 401, 601]``)."""
        return [s.gate for s in self.steps]

    def alpha(self, level: int) -> float:
        """ā at ``level``; the initial ā below 0."""
        return self.initial_alpha_cumprod if level < 0 else float(self.alphas_cumprod[level])

    def landing_levels(self, timesteps: Tensor) -> Tensor:
        """Per image, the level x_t reaches for training timestep t (``[N]`` → ``[N]``).

        t itself where no step is taken (only possible with ``landing="below"``).
        """
        out = timesteps.clone()
        for step in self.steps:
            out = torch.where(timesteps > step.gate, torch.full_like(out, step.end), out)
        return out

    def jump_std(self, step: InversionStep) -> float:
        """InPO's noise scale for a step: the DDIM variance of the whole jump, square-rooted.

        The official code evaluates ``DDIMScheduler._get_variance(prev_t, t)`` with prev_t = τ + Δ
        (the noisier level the step reached) and t = τ: ``(1-ā_τ)/(1-ā_{τ+Δ}) · (1-ā_{τ+Δ}/ā_τ)``,
        with ā at a negative τ = the final ā of the DDIM scheduler (the same initial ā as here).
        """
        a_lo, a_hi = self.alpha(step.start), self.alpha(step.end)
        return max((1 - a_lo) / (1 - a_hi) * (1 - a_hi / a_lo), 0.0) ** 0.5

    def step(self, model_output: Tensor, step: InversionStep, x: Tensor) -> Tensor:
        """Move ``x`` ([N, C, h, w]) from ``step.start`` to ``step.end`` (one DDIM step, η = 0)."""
        a_lo, a_hi = self.alpha(step.start), self.alpha(step.end)
        if self.prediction_type == "epsilon":
            x0 = (x - (1 - a_lo) ** 0.5 * model_output) / a_lo**0.5
            eps = model_output
        elif self.prediction_type == "v_prediction":
            x0 = a_lo**0.5 * x - (1 - a_lo) ** 0.5 * model_output
            eps = a_lo**0.5 * model_output + (1 - a_lo) ** 0.5 * x
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (x - a_lo**0.5 * x0) / (1 - a_lo) ** 0.5
        else:
            raise ConfigError(f"unknown prediction_type {self.prediction_type!r}")
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return a_hi**0.5 * x0 + (1 - a_hi) ** 0.5 * eps


def _alphas_cumprod(config: Mapping[str, Any]) -> Tensor:
    """ā_t of the config's β schedule, computed the way diffusers does (float32 β, cumprod)."""
    from diffusers import DDPMScheduler  # the schedule formulas are unchanged since 0.20

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    kwargs = {k: config[k] for k in keys if k in config and config[k] is not None}
    kwargs["rescale_betas_zero_snr"] = bool(config.get("rescale_betas_zero_snr", False))
    return DDPMScheduler(**kwargs).alphas_cumprod.double()


def _forward_grid(config: Mapping[str, Any], total: int, num_steps: int) -> list[int]:
    """0.20.0's forward grid, ascending, for ``leading`` and ``trailing`` spacing."""
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "leading":
        ratio = total // num_steps
        return [k * ratio + int(config.get("steps_offset", 0)) for k in range(num_steps)]
    if spacing == "trailing":
        ratio = total / num_steps
        return sorted(round(total - k * ratio) - 1 for k in range(num_steps))
    raise ConfigError(
        f"DDIM inversion supports timestep_spacing 'leading' or 'trailing' (as diffusers 0.20.0 "
        f"did), got {spacing!r}; set the scheduler config's timestep_spacing"
    )


@torch.no_grad()
def invert(
    denoiser: Denoiser,
    grid: InversionGrid,
    x0: Tensor,
    timesteps: Tensor,
    prompt_embeds: Tensor,
    renoise: bool = False,
    extra_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Invert ``x0`` along ``grid``; each image takes the steps whose gate is below its t.

    Per step: ``e1 = denoiser(x, told)``; plain DDIM takes ``x ← step(e1, x)``. With ``renoise``
    (SmPO) a second estimate at the tentative point, ``e2 = denoiser(step(e1, x), told)`` (the same
    told timestep, as the official code), is averaged: ``x ← step((e1+e2)/2, x)``. With
    ``extra_noise`` = η (InPO, 0.1) each step then adds ``η · z · grid.jump_std(step)``.

    Args:
        denoiser: the model, called on the images still being inverted.
        grid: an :class:`InversionGrid`.
        x0: ``[N, C, h, w]`` clean latents.
        timesteps: ``[N]`` training timestep t per image.
        prompt_embeds: ``[N, L, D]``.
        renoise: average a second noise estimate per step (ReNoise, one iteration).
        extra_noise: η of InPO's noise term; 0 for none.
        generator: for the extra noise.

    Returns:
        ``[N, C, h, w]`` inverted latents, each at ``grid.landing_levels(timesteps)``.
    """
    x = x0.clone()
    for step in grid.steps:
        active = (timesteps > step.gate).nonzero().squeeze(1)  # [n] images that take this step
        if active.numel() == 0:
            break
        x_a, emb = x[active], prompt_embeds[active]
        told = torch.full((active.numel(),), step.told, device=x.device, dtype=torch.long)
        eps = denoiser(x_a, told, emb)
        if renoise:
            eps = (eps + denoiser(grid.step(eps, step, x_a), told, emb)) / 2
        x_a = grid.step(eps, step, x_a)
        if extra_noise:
            z = torch.randn(x_a.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_a = x_a + extra_noise * grid.jump_std(step) * z
        x[active] = x_a.to(x.dtype)
    return x
