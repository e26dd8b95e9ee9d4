"""Pure tensor functions shared by objectives."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pref.types import DenoisePair

__all__ = [
    "dpo_metrics",
    "dpo_terms",
    "mse_diff",
    "per_sample_mse",
    "to_epsilon_and_x0",
    "upcast",
]


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32 (fp16/bf16 are raised; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
    return (upcast(pred) - upcast(target)).pow(2).flatten(1).mean(dim=1)


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


def to_epsilon_and_x0(
    model_out: Tensor, x_t: Tensor, alpha_t: Tensor, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """Convert an ε or v prediction into (ε̂, x̂0); ``alpha_t`` is ā_t broadcastable to x_t."""
    if prediction_type == "epsilon":
        eps = model_out
        x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - (1 - alpha_t).sqrt() * model_out
        eps = alpha_t.sqrt() * model_out + (1 - alpha_t).sqrt() * x_t
    else:
        raise ValueError(f"unsupported prediction_type '{prediction_type}'")
    return eps, x0
