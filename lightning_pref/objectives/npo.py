"""Diffusion-NPO: Diffusion-DPO with winner and loser exchanged, training a negative model."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["DiffusionNPO"]


class DiffusionNPO(PairObjective):
    """Diffusion-NPO (Wang et al., ICLR 2025, arXiv 2505.11245), as its official code (§11.1).

    Official code: ``G-U-N/Diffusion-NPO`` ``DPO-DPO-NPO/train_sd15.py`` and ``train_sdxl.py``. The
    only change from the Diffusion-DPO script is that the pair is reversed when ``label_0 == 1``
    instead of ``label_0 == 0``: the human-*rejected* image sits in the winner slot. So
    ``NPO(x_w, x_l) = DiffusionDPO(x_l, x_w)``: with ``diff = (mse_w - mse_l) - (ref_w - ref_l)``,
    ``inside = +0.5 · β · diff`` and ``loss = -logsigmoid(inside).mean()``. The trained model is a
    *negative* model: it moves towards what people rejected, and at sampling time it replaces the
    unconditional branch of classifier-free guidance (:mod:`lightning_pref.models.negative`).

    β convention: ours is the −0.5·β form of :class:`~lightning_pref.objectives.DiffusionDPO`
    (the official SDXL script's form). The official SD1.5 script uses the diffusers form
    ``-logsigmoid(β_d · (ref_diff - model_diff))`` with ``β_d = 500``, which is ``β = 2·β_d = 1000``
    here (the default); the SDXL launcher's ``β = 2000`` is already in our form.

    The official runs train LoRA (r = 8, α = 8, gaussian init) from the *base* model, not from a
    DPO model, keep ties (label 0.5, ``jpg_0`` as the winner, then swapped) and use no caption
    dropout. Ties are the data module's business (``drop_ties=False`` reproduces them).

    Metrics: the four MSEs keep their names (``model_mse_w`` is the human winner's), and
    ``implicit_acc`` is the fraction of pairs where the model, relative to the reference, prefers
    the human-rejected image (the NPO training accuracy).

    Args:
        beta: KL-regularisation strength β in the −0.5·β convention (official SD1.5: 1000,
            SDXL: 2000).
    """

    trains_negative: ClassVar[bool] = True
    """The loss falls when the policy favours the loser (read by the generic direction test)."""

    def __init__(self, beta: float = 1000.0) -> None:
        super().__init__()
        self.beta = beta

    @staticmethod
    def swap(pair: DenoisePair) -> DenoisePair:
        """The same pair with winner and loser exchanged (``pref_prob`` becomes ``1 - p``)."""
        return DenoisePair(
            pair.pred_l,
            pair.pred_w,
            pair.target_l,
            pair.target_w,
            pair.ref_pred_l,
            pair.ref_pred_w,
            pair.timesteps,
            1.0 - pair.pref_prob,
        )

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return Diffusion-DPO's loss on the swapped pair; metrics keyed by the human labels."""
        terms = dpo_terms(self.swap(pair))  # "_w" here is the human loser
        inside = -0.5 * self.beta * terms["diff"]  # [B]
        loss = -F.logsigmoid(inside).mean()
        swapped = dpo_metrics(terms, inside)
        relabel = {"_w": "_l", "_l": "_w"}
        metrics = {
            (k[:-2] + relabel[k[-2:]] if k[-2:] in relabel else k): v for k, v in swapped.items()
        }
        return ObjectiveOutput(loss, metrics)
