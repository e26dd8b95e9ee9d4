"""A reverse-KL (mode-seeking) pairwise objective on Diffusion-DPO's implicit rewards: EXO-style."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["DiffusionEXO"]


class DiffusionEXO(PairObjective):
    """EXO's pairwise reverse-KL loss (Ji et al. 2024, arXiv 2402.00856) on diffusion rewards.

    **What this is, and what it is not.** METHODS §11.3: DMPO (arXiv 2507.07510) minimises the
    *reverse* KL to the optimal RLHF policy, but its loss, α/β and settings were not found and it
    has no code. This class is the closest verified analogue, EXO's ``exact_loss`` with
    ``loss_type="pref"`` from ``MinkaiXu/fPO`` ``src/align_stage/loss.py`` (a DMPO co-author's
    repo), ported by us to diffusion. It is **not DMPO**; the port is a reconstruction.

    Per pair, the implicit rewards are Diffusion-DPO's per-image terms (our port, unverified)
    ``h_w = -0.5·β·(mse_w - ref_mse_w)`` and ``h_l = -0.5·β·(mse_l - ref_mse_l)``, so the model's
    two-way distribution ``p_θ = softmax([h_w, h_l])`` has ``p_θ(w) = sigmoid(inside)`` with
    Diffusion-DPO's ``inside``. The target is ``log p_tgt = clamp(log [p, 1 - p], min=log_eps)``
    with ``p = pref_prob``: for hard labels ``[0, -10]``, exactly EXO's "pref" labels (the "rw"
    variant clamps the same way). The loss is the reverse KL, averaged over pairs::

        loss = Σ_y p_θ(y) · (log p_θ(y) - log p_tgt(y))         # KL(p_θ ‖ p_tgt)

    Diffusion-DPO's loss is the forward KL ``KL(p_tgt ‖ p_θ)`` up to a constant (for p = 1,
    ``-log p_θ(w)``): mean-seeking, while this one is mode-seeking and saturates once
    ``p_θ(w)`` reaches ``p_tgt(w)`` (≈ 1 - e^-10 for hard labels) instead of pushing ``inside``
    to infinity.

    Args:
        beta: β in the −0.5·β convention of Diffusion-DPO (EXO's ``beta_model``); default 5000
            as the official Diffusion-DPO runs, so ``inside`` has DPO's scale. Not tuned.
        log_eps: floor of the target's log-probabilities (fPO's ``log_epsilon = -10``).
    """

    def __init__(self, beta: float = 5000.0, log_eps: float = -10.0) -> None:
        super().__init__()
        self.beta, self.log_eps = beta, log_eps

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the reverse-KL loss; metrics as DPO plus the mean ``p_model_w`` = p_θ(w)."""
        terms = dpo_terms(pair)  # raises if the reference predictions are missing
        h_w = -0.5 * self.beta * (terms["model_mse_w"] - terms["ref_mse_w"])  # [B]
        h_l = -0.5 * self.beta * (terms["model_mse_l"] - terms["ref_mse_l"])  # [B]
        log_p = F.log_softmax(torch.stack([h_w, h_l], dim=1), dim=1)  # [B, 2]
        p = pair.pref_prob.to(log_p.dtype)  # [B]
        target = torch.stack([p, 1 - p], dim=1)  # [B, 2]
        log_target = target.clamp(min=1e-38).log().clamp(min=self.log_eps)  # [B, 2]
        loss = (log_p.exp() * (log_p - log_target)).sum(dim=1).mean()
        metrics = dpo_metrics(terms, h_w - h_l)
        metrics["p_model_w"] = log_p[:, 0].exp().mean().detach()
        return ObjectiveOutput(loss, metrics)
