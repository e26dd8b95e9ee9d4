"""PNAPO: offline preference optimisation for rectified flow with noise-tracked pairs."""

from __future__ import annotations

import torch.nn.functional as F

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["PNAPO"]


class PNAPO(PairObjective):
    """Prior Noise-Aware Preference Optimization (Lu et al., arXiv 2605.09433, ICML 2026).

    EXPERIMENTAL: the paper has no public code; this follows its description, and where that is
    not precise the choice is ours (marked). Data are noise-tracked pairs
    (:class:`~lightning_pref.types.NoisePairBatch`: each image with the prior noise x_T it was
    generated from). Each image is noised along its own straight line,
    ``x_t = (1 − σ) x0 + σ x_T``, regressing the velocity ``x_T − x0`` (the module does this when
    a batch carries its noises; winner and loser then share t, not the noise). The loss is
    Diffusion-DPO's with a reward-gap-scaled regularisation:
    ``loss = −log σ(−½·β·(2p − 1)·[(mse_w − ref_w) − (mse_l − ref_l)])`` with ``p = σ(Δr)``
    (``pref_prob``), so ``2p − 1 = tanh(Δr / 2)``: pairs the reward barely separates count less.
    Ours: the paper also adapts the regularisation to training progress; its schedule is not
    public, so none is applied (β is constant over training). Hard labels (p = 1) give plain
    flow DPO.

    Args:
        beta: β in the −½·β convention of :class:`~lightning_pref.objectives.DiffusionDPO`.
    """

    def __init__(self, beta: float = 100.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """The reward-gap-scaled DPO loss; metrics as DPO's plus the mean scale ``2p − 1``."""
        terms = dpo_terms(pair)
        scale = 2 * pair.pref_prob.to(terms["diff"].dtype) - 1  # [B] tanh(Δr / 2)
        inside = -0.5 * self.beta * scale * terms["diff"]  # [B]
        loss = -F.logsigmoid(inside).mean()
        metrics = dpo_metrics(terms, inside)
        metrics["beta_scale"] = scale.mean().detach()
        return ObjectiveOutput(loss, metrics)
