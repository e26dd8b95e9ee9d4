"""SPO: step-by-step preference optimisation."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from lightning_pref.objectives.base import StepObjective
from lightning_pref.types import ObjectiveOutput, StepPair

__all__ = ["SPO", "clamped_log_ratio", "step_metrics"]


def clamped_log_ratio(logp: Tensor, ref_logp: Tensor, clip: float | None) -> Tensor:
    """``log clamp(exp(logp − ref_logp), 1 − clip, 1 + clip)`` per pair, ``[B]``.

    Evaluated in log space, ``clamp(logp − ref_logp, log(1 − clip), log(1 + clip))``: the same
    values and gradients as the official ratio form (exactly zero once the ratio leaves
    ``[1 − clip, 1 + clip]``: a hard trust region, no PPO-style ``min``) without overflowing ``exp``
    when a transition's log-density moves a lot (small σ on the last steps). ``clip=None`` returns
    the plain log-ratio.
    """
    log_ratio = logp - ref_logp
    if clip is None:
        return log_ratio
    return log_ratio.clamp(math.log1p(-clip), math.log1p(clip))


class SPO(StepObjective):
    """SPO (Liang et al., arXiv 2406.04314, CVPR'25), the loss of ``train_spo.py`` (METHODS §2.3).

    For a step pair sharing x_t, with log-probabilities mean-reduced over C, h, w:
    ``r = clamp(exp(logp_θ − logp_ref), 1 − clip, 1 + clip)`` for winner and loser, and
    ``loss = −logσ(β·(log r_w − log r_l))``, averaged over pairs. The loss is inherited from D3PO
    (which uses β=0.1); SPO's configs use β=10 and clip (their ``eps``) 0.1. With policy ==
    reference every ratio is 1 and the loss is log 2.

    Args:
        beta: β, the scale of the log-ratio difference.
        clip: the ratio clamp ε; None disables the clamp.
    """

    def __init__(self, beta: float = 10.0, clip: float | None = 0.1) -> None:
        super().__init__()
        if clip is not None and not 0.0 < clip < 1.0:
            raise ValueError(f"clip must be in (0, 1) or None, got {clip}")
        self.beta = beta
        self.clip = clip

    def forward(self, pair: StepPair) -> ObjectiveOutput:
        """Return the SPO loss and the ratio metrics (``ratio_win``, ``ratio_lose``, ...)."""
        log_r_w = clamped_log_ratio(pair.logp_w, pair.ref_logp_w, self.clip)  # [B]
        log_r_l = clamped_log_ratio(pair.logp_l, pair.ref_logp_l, self.clip)  # [B]
        inside = self.beta * (log_r_w - log_r_l)  # [B]
        return ObjectiveOutput(-F.logsigmoid(inside).mean(), step_metrics(pair, self.clip))


def step_metrics(pair: StepPair, clip: float | None) -> dict[str, Tensor]:
    """Detached ratio statistics shared by the step objectives."""
    raw_w = (pair.logp_w - pair.ref_logp_w).detach()  # [B]
    raw_l = (pair.logp_l - pair.ref_logp_l).detach()  # [B]
    metrics = {
        "ratio_win": raw_w.exp().mean(),
        "ratio_lose": raw_l.exp().mean(),
        "implicit_acc": (raw_w > raw_l).float().mean(),
    }
    if clip is not None:
        outside = ((raw_w.exp() - 1).abs() > clip) | ((raw_l.exp() - 1).abs() > clip)
        metrics["clip_frac"] = outside.float().mean()
    return metrics
