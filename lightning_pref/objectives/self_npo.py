"""Self-NPO: truncated-diffusion fine-tuning of a negative model, with no pairs and no reward.

The pieces of the official ``G-U-N/Diffusion-NPO`` ``Self-NPO/train.py`` (METHODS §11.2) as pure
functions; :class:`~lightning_pref.modules.self_npo.SelfNPOModule` runs them. Per sample, with
``α_t = sqrt(ā_t)``, ``σ_t = sqrt(1 - ā_t)`` and a 25-step DDIM grid ``t_i = 40(i+1) - 1``:

1. ``x_t`` = a real latent forward-noised to a random grid timestep.
2. :func:`truncated_diffusion_target`: K = 5 DDIM (η = 0) steps of a frozen EMA teacher under
   guidance ``e = e_c + w·(e_c - e_u)`` (w = -1: the *unconditional* teacher, SD1.5; w = -5:
   negative guidance, SDXL), one more teacher evaluation at the final ``(x_t', t')``, and
   ``target = x̂0`` of that evaluation (no grad). A sample that reaches t = 0 stays there.
3. :func:`renoise`: ``s ~ U{t'+1, ..., T-1}`` and ``x_s = α_s·(x_t'/α_t' + sqrt(σ_s²/α_s² -
   σ_t'²/α_t'²)·z)``: forward noise from ``x_t'`` (not from x̂0) to s.
4. The student sees ``(x_s, s, c)`` with the *text* prompt; its x̂0 is pulled to the target by
   :class:`SelfNPOLoss`, ``mean(sqrt((x̂0_θ - target)² + c²) - c)``, c = 0.001 (or L2).

Deviations from the official script: v-prediction models convert the teacher's and the
student's output with the v formulas (the script treats the student's output as ε); and when
every sample of a batch reaches t = 0 before K steps, the script stops without the final teacher
evaluation and keeps the previous x̂0, which we do not copy (the final evaluation always runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pref.objectives.base import TargetObjective
from lightning_pref.objectives.functional import to_epsilon_and_x0, upcast
from lightning_pref.types import DenoiseToTarget, ObjectiveOutput

__all__ = [
    "SelfNPOLoss",
    "TruncatedTarget",
    "pseudo_huber",
    "renoise",
    "sample_later_timesteps",
    "self_npo_grid",
    "truncated_diffusion_target",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def pseudo_huber(pred: Tensor, target: Tensor, c: float = 0.001) -> Tensor:
    """``mean(sqrt((pred - target)² + c²) - c)`` over every element (a scalar)."""
    diff = upcast(pred) - upcast(target)
    return (diff.pow(2) + c * c).sqrt().sub(c).mean()


def self_npo_grid(num_train_timesteps: int = 1000, num_steps: int = 25) -> Tensor:
    """The official DDIM grid ``(i+1)·(T // n) - 1``: 39, 79, ..., 999 for T = 1000, n = 25."""
    ratio = num_train_timesteps // num_steps
    return torch.arange(1, num_steps + 1) * ratio - 1


def _view(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


@dataclass(frozen=True)
class TruncatedTarget:
    """What :func:`truncated_diffusion_target` hands the student side."""

    x_t: Tensor  # [B, C, h, w] the teacher's state after K steps
    timesteps: Tensor  # [B] its timestep t' (0 for samples that reached the end)
    target: Tensor  # [B, C, h, w] x̂0 of the teacher at (x_t, t'), detached


@torch.no_grad()
def truncated_diffusion_target(
    teacher: Denoiser,
    alphas_cumprod: Tensor,
    prediction_type: str,
    x_t: Tensor,
    timesteps: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance_weight: float = -1.0,
    num_steps: int = 5,
    step_size: int = 40,
) -> TruncatedTarget:
    """K guided DDIM steps of the teacher from ``(x_t, t)``, then its x̂0 at the final state.

    Args:
        teacher: ``(x, t, embeds) -> ε or v``, the frozen EMA copy.
        alphas_cumprod: ``[T]`` ā of the training schedule.
        prediction_type: ``epsilon`` or ``v_prediction``.
        x_t: ``[B, C, h, w]`` noised latents at ``timesteps``.
        timesteps: ``[B]`` grid timesteps (:func:`self_npo_grid`).
        cond: ``[B, L, D]`` text embeddings.
        uncond: ``[B, L, D]`` embeddings of the unconditional (or negative) prompt.
        guidance_weight: w in ``e = e_c + w·(e_c - e_u)``: -1 = unconditional (official SD1.5),
            -5 = SDXL's negative guidance; CFG scale ``1 + w``.
        num_steps: K, DDIM steps (official 5).
        step_size: grid spacing (official 40 = 1000 // 25).
    """
    x, t = upcast(x_t), timesteps.clone()
    active = torch.ones_like(t, dtype=torch.bool)  # False once a sample has stepped to t = 0
    for k in range(num_steps + 1):
        out = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
        out_c, out_u = upcast(out).chunk(2)
        guided = out_c + guidance_weight * (out_c - out_u)  # [B, C, h, w]
        a_t = _view(alphas_cumprod[t], x)
        eps, x0 = to_epsilon_and_x0(guided, x, a_t, prediction_type)
        if k == num_steps:
            return TruncatedTarget(x, t, x0.detach())
        t_prev = (t - step_size).clamp(min=0)
        a_prev = _view(alphas_cumprod[t_prev], x)
        stepped = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        x = torch.where(_view(active, x).bool(), stepped, x)
        t = torch.where(active, t_prev, t)
        active = active & (timesteps - (k + 1) * step_size >= 0)
    raise AssertionError("unreachable")


def sample_later_timesteps(
    timesteps: Tensor, num_train_timesteps: int, generator: torch.Generator | None = None
) -> Tensor:
    """``s ~ U{t+1, ..., T-1}`` per sample ``[B]`` (t = T-1 gives s = T-1)."""
    u = torch.rand(timesteps.shape, generator=generator, device=timesteps.device)
    span = (num_train_timesteps - 1 - timesteps).clamp(min=1)  # how many values s can take
    s = timesteps + 1 + (u * span).long().clamp(max=span - 1)
    return s.clamp(max=num_train_timesteps - 1)


def renoise(
    x_t: Tensor, timesteps: Tensor, later: Tensor, alphas_cumprod: Tensor, noise: Tensor
) -> Tensor:
    """Forward-noise ``x_t`` from t to s > t: ``α_s·(x_t/α_t + sqrt(σ_s²/α_s² - σ_t²/α_t²)·z)``."""
    a_t, a_s = _view(alphas_cumprod[timesteps], x_t), _view(alphas_cumprod[later], x_t)
    nsr_t, nsr_s = (1 - a_t) / a_t, (1 - a_s) / a_s  # σ²/α²
    return a_s.sqrt() * (x_t / a_t.sqrt() + (nsr_s - nsr_t).clamp(min=0).sqrt() * noise)


class SelfNPOLoss(TargetObjective):
    """Self-NPO's student loss (step 4 above): x̂0 of the student's output, pulled to the target.

    ``x̂0 = (x_s - sqrt(1 - ā_s)·ε̂) / sqrt(ā_s)`` (ε̂ from ε or v), then pseudo-Huber (official
    default, c = 0.001) or L2 against the teacher's detached x̂0. No reference model.

    Args:
        huber_c: c of the pseudo-Huber loss; None = mean squared error (official ``l2``).
    """

    def __init__(self, huber_c: float | None = 0.001) -> None:
        super().__init__()
        self.huber_c = huber_c

    def forward(self, pair: DenoiseToTarget) -> ObjectiveOutput:
        """Scalar loss of the student's x̂0 ``[N, C, h, w]`` against the detached target."""
        _, pred_x0 = to_epsilon_and_x0(
            upcast(pair.pred), upcast(pair.x_t), pair.alphas_cumprod, pair.prediction_type
        )
        target = pair.target_x0
        mse = (upcast(pred_x0) - upcast(target)).pow(2).mean()
        loss = mse if self.huber_c is None else pseudo_huber(pred_x0, target, self.huber_c)
        metrics = {"x0_mse": mse.detach(), "student_timestep": pair.timesteps.float().mean()}
        return ObjectiveOutput(loss, metrics)
