"""DSPO: direct score preference optimisation."""

from __future__ import annotations

import torch

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["DSPO"]


class DSPO(PairObjective):
    """DSPO (Zhu et al., ICLR 2025), the SD1.5 form of its official code (METHODS §5).

    With DPO's ``inside = -0.5·β·((mse_w - mse_l) - (ref_mse_w - ref_mse_l))``, the winner's
    prediction is regressed onto a preference-corrected target:
    ``loss = mean(((ε_θ^w - ε^w) - β·(1 - σ(inside))·(ε_θ^w - ε_ref^w))²)``, the mean over the
    batch and C, h, w. Gradients flow through ``inside`` and ``ε_θ^w`` (the reference is frozen).
    When β is small (the official 0.001) this is close to SFT on winners plus a weak pull away
    from the reference; the SDXL branch of the official code has a different, thresholded form
    that is not implemented.

    Args:
        beta: β, used in both places (official SD1.5 grid: 0.001, 0.01, 0.05).
    """

    def __init__(self, beta: float = 0.001) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the DSPO loss; metrics as DPO."""
        terms = dpo_terms(pair)
        inside = -0.5 * self.beta * terms["diff"]  # [B]
        coef = self.beta * (1 - torch.sigmoid(inside)).view(-1, *[1] * (pair.pred_w.dim() - 1))
        assert pair.ref_pred_w is not None  # checked by dpo_terms
        pred_w = pair.pred_w.float()
        residual = (pred_w - pair.target_w.float()) - coef * (pred_w - pair.ref_pred_w.float())
        loss = residual.pow(2).mean()
        return ObjectiveOutput(loss, dpo_metrics(terms, inside))
