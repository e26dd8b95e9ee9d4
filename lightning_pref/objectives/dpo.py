"""Diffusion-DPO."""

from __future__ import annotations

import torch.nn.functional as F

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["DiffusionDPO"]


class DiffusionDPO(PairObjective):
    """Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908, Eq. 14).

    Computed as the official ``SalesforceAIResearch/DiffusionDPO/train.py`` does (METHODS §1.1):
    per-sample MSE is the mean over C, h, w;
    ``inside = -0.5 * beta * ((mse_w - mse_l) - (ref_mse_w - ref_mse_l))`` and
    ``loss = -logsigmoid(inside).mean()`` (the mean outside the sigmoid, diffusers#6702).

    Scale: the 0.5 is the Gaussian KL's ½‖·‖². The diffusers LoRA port drops the 0.5, so its
    ``beta_dpo=2500`` equals ``beta=5000`` here. The official SD1.5 and SDXL launchers use 5000; the
    paper's main SD1.5 results use 2000.

    Args:
        beta: KL-regularisation strength β in the −0.5·β convention.
    """

    def __init__(self, beta: float = 5000.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the DPO loss and ``implicit_acc`` plus the four MSEs as metrics."""
        terms = dpo_terms(pair)
        inside = -0.5 * self.beta * terms["diff"]  # [B]
        loss = -F.logsigmoid(inside).mean()
        return ObjectiveOutput(loss, dpo_metrics(terms, inside))
