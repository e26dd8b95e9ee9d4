"""DSPO: direct score preference optimisation, the two branches of its official loss."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms, upcast
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["DSPO", "DSPOSDXL"]


def _dspo_terms(pair: DenoisePair, beta: float) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """What both branches share: DPO's terms, ``inside``, ``w``, ``d``.

    ``w = 1 - σ(inside)`` is ``[B, 1, 1, 1]`` and ``d = ε_θ^w - ε_ref^w`` is ``[B, C, h, w]``.
    """
    terms = dpo_terms(pair)
    inside = -0.5 * beta * terms["diff"]  # [B]
    weight = (1 - torch.sigmoid(inside)).view(-1, *[1] * (pair.pred_w.dim() - 1))  # [B,1,1,1]
    assert pair.ref_pred_w is not None  # checked by dpo_terms
    deviation = upcast(pair.pred_w) - upcast(pair.ref_pred_w)  # [B, C, h, w]
    return terms, inside, weight, deviation


class DSPO(PairObjective):
    """DSPO (Zhu et al., ICLR 2025), the SD1.5 branch of its official code (METHODS §5).

    Source: huaishengzhu/DSPO @ 8b4e09b, ``train.py`` (``--train_method dspo``, the SD1.5
    branch, lines 1168-1169); the β grid is its README's. With DPO's
    ``inside = -0.5·β·((mse_w - mse_l) - (ref_mse_w - ref_mse_l))``, the winner's prediction is
    regressed onto a preference-corrected target:
    ``loss = mean(((ε_θ^w - ε^w) - β·(1 - σ(inside))·(ε_θ^w - ε_ref^w))²)``, the mean over the
    batch and C, h, w. Gradients flow through ``inside`` and ``ε_θ^w`` (the reference is frozen).
    When β is small (the official 0.001) this is close to SFT on winners plus a weak pull away
    from the reference. The SDXL branch is :class:`DSPOSDXL`.

    Args:
        beta: β, used in both places (official SD1.5 grid: 0.001, 0.01, 0.05).
    """

    def __init__(self, beta: float = 0.001) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the DSPO loss; metrics as DPO."""
        terms, inside, weight, deviation = _dspo_terms(pair, self.beta)
        residual = (upcast(pair.pred_w) - upcast(pair.target_w)) - self.beta * weight * deviation
        return ObjectiveOutput(residual.pow(2).mean(), dpo_metrics(terms, inside))


class DSPOSDXL(PairObjective):
    """DSPO (Zhu et al., ICLR 2025), the SDXL branch of its official code (METHODS §5).

    Source: huaishengzhu/DSPO @ 8b4e09b, ``train.py`` (``--train_method dspo`` with ``--sdxl``,
    the SDXL branch, lines 1163-1167); the β grid is its README's. With DPO's ``inside`` (as
    :class:`DSPO`), ``d = ε_θ^w - ε_ref^w`` and ``w = 1 - σ(inside)``:
    ``loss = mean((w·d)²)`` while the batch's ``mean(d²) ≥ threshold`` (0.1), else ``mean(w²)``.
    Near the reference it raises ``inside`` as DPO does; once the policy has moved away it pulls
    the winner's prediction back, weighted by how unsure the preference still is. Its official β
    is 1000–5000 (the −0.5·β DPO scale).

    Args:
        beta: β of ``inside``.
        threshold: the switch on the batch's ``mean(d²)``.
    """

    def __init__(self, beta: float = 1000.0, threshold: float = 0.1) -> None:
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the DSPO loss (SDXL branch); metrics as DPO."""
        terms, inside, weight, deviation = _dspo_terms(pair, self.beta)
        far = deviation.pow(2).flatten(1).mean(dim=1).mean() >= self.threshold
        loss = (weight * deviation).pow(2).mean() if far else weight.pow(2).mean()
        return ObjectiveOutput(loss, dpo_metrics(terms, inside))
