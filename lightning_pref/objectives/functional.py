"""Pure tensor functions shared by objectives."""

from __future__ import annotations

from torch import Tensor

from lightning_pref.types import DenoisePair

__all__ = ["dpo_metrics", "dpo_terms", "mse_diff", "per_sample_mse"]


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample, averaged over every non-batch dimension.

    Args:
        pred: ``[B, ...]`` model output.
        target: ``[B, ...]`` regression target, same shape.

    Returns:
        ``[B]`` mean over C, h, w, as the official Diffusion-DPO train.py computes it (not a sum).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def mse_diff(pred_w: Tensor, pred_l: Tensor, target_w: Tensor, target_l: Tensor) -> Tensor:
    """Per-sample MSE of the winner minus that of the loser, ``[B]``."""
    return per_sample_mse(pred_w, target_w) - per_sample_mse(pred_l, target_l)


def dpo_terms(pair: DenoisePair) -> dict[str, Tensor]:
    """The four per-sample MSEs of Diffusion-DPO and ``diff = (mse_w - mse_l) - (ref_w - ref_l)``.

    Every DPO-style objective (DPO, SmPO, InPO, DSPO) scales ``diff`` by ``-0.5·β·(...)``.
    Reference MSEs are detached. All values are ``[B]``.
    """
    if pair.ref_pred_w is None or pair.ref_pred_l is None:
        raise ValueError("this objective needs reference predictions (requires_reference=True)")
    terms = {
        "model_mse_w": per_sample_mse(pair.pred_w, pair.target_w),
        "model_mse_l": per_sample_mse(pair.pred_l, pair.target_l),
        "ref_mse_w": per_sample_mse(pair.ref_pred_w, pair.target_w).detach(),
        "ref_mse_l": per_sample_mse(pair.ref_pred_l, pair.target_l).detach(),
    }
    terms["diff"] = (terms["model_mse_w"] - terms["model_mse_l"]) - (
        terms["ref_mse_w"] - terms["ref_mse_l"]
    )
    return terms


def dpo_metrics(terms: dict[str, Tensor], inside: Tensor) -> dict[str, Tensor]:
    """Detached batch means of the MSEs plus ``implicit_acc = mean(inside > 0)``."""
    metrics = {k: v.mean().detach() for k, v in terms.items() if k != "diff"}
    metrics["implicit_acc"] = (inside > 0).float().mean()
    return metrics
