"""SmPO-Diffusion: Diffusion-DPO with a per-pair smoothed preference strength."""

from __future__ import annotations

import logging

import torch.nn.functional as F

from lightning_pref.models.noising import NoisingStrategy, ReNoiseInversion
from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["SmPO"]

logger = logging.getLogger("lightning_pref.objectives")


class SmPO(PairObjective):
    """SmPO-Diffusion (Lu et al. 2025, arXiv 2506.02698), as its official train.py (METHODS §4).

    ``inside = -0.5 · β · γ(2p - 1) · ((mse_w - mse_l) - (ref_mse_w - ref_mse_l))`` and
    ``loss = -logsigmoid(inside).mean()``, where p = ``pref_prob`` is the smoothed label the data
    side computes from reward scores (``score_labels`` of the data module: p = σ(n_w - n_l) with
    min-max normalised PickScores, so p ∈ [0.5, 0.731] and γ(2p-1) ∈ [0, 4.62] for γ = 10). Pairs
    of similar quality get a weak push. With hard labels (p = 1) this is DPO with β·γ; a warning
    says so once. The noising is SmPO's ReNoise inversion (grid 5, the SD1.5 code) unless the
    module's ``noising`` overrides it (10 for SDXL).

    Args:
        beta: β in the -0.5·β convention (SmPO SD1.5: 2000, SDXL: 5000).
        gamma: γ of the smoothing factor γ(2p - 1) (SmPO: 10).
        inversion_steps: grid of the default ReNoise inversion.
    """

    def __init__(self, beta: float = 2000.0, gamma: float = 10.0, inversion_steps: int = 5) -> None:
        super().__init__()
        self.beta, self.gamma, self.inversion_steps = beta, gamma, inversion_steps
        self._warned = False

    def default_noising(self) -> NoisingStrategy:
        """ReNoise inversion on a grid of ``inversion_steps``."""
        return ReNoiseInversion(self.inversion_steps)

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the SmPO loss; metrics as DPO plus the mean ``smoothing_factor`` γ(2p-1)."""
        if not self._warned and bool((pair.pref_prob >= 1.0).all()):
            logger.warning(
                "SmPO got hard labels (pref_prob = 1): set the data module's score_labels to "
                "smooth them by a reward; as is, this is Diffusion-DPO with beta*gamma"
            )
            self._warned = True
        terms = dpo_terms(pair)
        factor = self.gamma * (2 * pair.pref_prob.to(terms["diff"].dtype) - 1)  # [B]
        inside = -0.5 * self.beta * factor * terms["diff"]  # [B]
        loss = -F.logsigmoid(inside).mean()
        metrics = dpo_metrics(terms, inside)
        metrics["smoothing_factor"] = factor.mean().detach()
        return ObjectiveOutput(loss, metrics)
