"""MaPO: margin-aware, reference-free preference optimisation."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import per_sample_mse
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["MaPO", "snr_weight"]


def snr_weight(x: Tensor) -> Tensor:
    """``x / (exp(x) - 1)``, elementwise, with its limit 1 - x/2 near x = 0."""
    small = x.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 - x / 2, safe / torch.expm1(safe))


class MaPO(PairObjective):
    """MaPO (Hong et al. 2024), as the official ``utils.py::compute_loss`` (METHODS §5).

    Reference-free, so the module skips the reference pass. With per-sample MSEs m_w, m_l and
    s = ``snr``: ``lo = s·m_w/(e^{s·m_w} - 1) - s·m_l/(e^{s·m_l} - 1)`` and
    ``loss = mean(m_w) - β·mean(logsigmoid(T·lo))`` with T = ``scale`` = 1000 (the official code
    multiplies by ``num_train_timesteps``). The first term is SFT on the winner; the second
    rewards a lower winner MSE than loser MSE (the map is decreasing in m).

    Args:
        beta: β_mapo (official: 0.1).
        snr: s, the official ``snr_value`` (0.5).
        scale: multiplier of the log-odds (the scheduler's 1000 timesteps).
    """

    requires_reference: ClassVar[bool] = False

    def __init__(self, beta: float = 0.1, snr: float = 0.5, scale: float = 1000.0) -> None:
        super().__init__()
        self.beta, self.snr, self.scale = beta, snr, scale

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the MaPO loss, the mean log-odds and the two MSEs as metrics."""
        mse_w = per_sample_mse(pair.pred_w, pair.target_w)  # [B]
        mse_l = per_sample_mse(pair.pred_l, pair.target_l)  # [B]
        log_odds = snr_weight(self.snr * mse_w) - snr_weight(self.snr * mse_l)  # [B]
        ratio = F.logsigmoid(self.scale * log_odds)  # [B]
        loss = mse_w.mean() - self.beta * ratio.mean()
        metrics = {
            "log_odds": log_odds.mean(),
            "margin_acc": (log_odds > 0).float().mean(),
            "model_mse_w": mse_w.mean(),
            "model_mse_l": mse_l.mean(),
        }
        return ObjectiveOutput(loss, {k: v.detach() for k, v in metrics.items()})
