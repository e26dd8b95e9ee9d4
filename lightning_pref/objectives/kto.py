"""Diffusion-KTO: utility maximisation on per-image binary feedback."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pref.objectives.base import UnpairedObjective
from lightning_pref.objectives.functional import per_sample_mse
from lightning_pref.types import DenoiseLabeled, ObjectiveOutput

__all__ = ["DiffusionKTO"]


class DiffusionKTO(UnpairedObjective):
    """Diffusion-KTO (Li et al. 2024), as the official ``train_kto_sd_v1.5.py`` (METHODS §5).

    Per image, the implicit reward is ``g = -(mse_θ - mse_ref)`` (the "log" ratio is -MSE,
    diffusion-kto#4). The reference point is ``kl = clamp(mean(g), min=0)`` over the whole batch
    on all ranks, detached. With label y = ±1: ``h = σ(y·β·(g - kl))`` and
    ``loss = mean(λ_y · (1 - h))``, λ_y = ``lambda_desirable`` for y = +1 and
    ``lambda_undesirable`` for y = -1.

    Args:
        beta: β (official: 1000).
        lambda_desirable: λ_d (official: 1).
        lambda_undesirable: λ_u (official: 1).
    """

    def __init__(
        self, beta: float = 1000.0, lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0
    ) -> None:
        super().__init__()
        self.beta = beta
        self.lambda_desirable, self.lambda_undesirable = lambda_desirable, lambda_undesirable

    def global_mean(self, values: Tensor) -> Tensor:
        """Mean of ``values`` over the batches of every rank, detached.

        Sums and counts are added over ranks, so the ranks' batches may differ in size.
        """
        count = values.new_tensor(values.numel()).float()
        total = torch.stack([values.detach().float().sum(), count])  # [2]
        total = self.sum_over_ranks(total)  # [2]
        return total[0] / total[1].clamp(min=1)

    def forward(self, batch: DenoiseLabeled) -> ObjectiveOutput:
        """Return the KTO loss; metrics: ``kl``, ``implicit_acc`` (sign of y·(g - kl)), MSEs."""
        if batch.ref_pred is None:
            raise ValueError("DiffusionKTO needs reference predictions (requires_reference=True)")
        mse = per_sample_mse(batch.pred, batch.target)  # [N]
        ref_mse = per_sample_mse(batch.ref_pred, batch.target).detach()  # [N]
        g = -(mse - ref_mse)  # [N]
        kl = self.global_mean(g).clamp(min=0)
        sign = torch.sign(batch.labels.to(g.dtype))  # [N]
        h = torch.sigmoid(sign * self.beta * (g - kl))  # [N]
        weight = torch.where(sign > 0, self.lambda_desirable, self.lambda_undesirable)
        loss = (weight.to(h.dtype) * (1 - h)).mean()
        metrics = {
            "kl": kl,
            "implicit_acc": (sign * (g - kl) > 0).float().mean(),
            "desirable_frac": (sign > 0).float().mean(),
            "model_mse": mse.mean(),
            "ref_mse": ref_mse.mean(),
        }
        return ObjectiveOutput(loss, {k: v.detach() for k, v in metrics.items()})
