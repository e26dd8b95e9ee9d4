"""CaPO: a squared loss pulling Diffusion-DPO's implicit reward gap to a calibrated reward gap."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pref.objectives.base import PairObjective
from lightning_pref.objectives.functional import dpo_metrics, dpo_terms
from lightning_pref.types import DenoisePair, ObjectiveOutput

__all__ = ["CaPO", "gap_to_pref_prob", "pref_prob_to_gap"]


def gap_to_pref_prob(gap: Tensor) -> Tensor:
    """Encode a calibrated gap ``Δ ∈ [-1, 1]`` as the pair's ``pref_prob = (1 + Δ) / 2``.

    Both calibrated rewards are mean win probabilities in [0, 1], so Δ ∈ [-1, 1] and the label
    lies in [0, 1]: 0.5 for equal rewards, 1 for a sample that beats every other one against a
    sample that loses to every other one. Swapping winner and loser maps p to 1 - p and Δ to -Δ,
    so the data side's label handling (``label < 0.5`` swaps the images) stays consistent.
    """
    return (1.0 + gap) / 2.0


def pref_prob_to_gap(pref_prob: Tensor) -> Tensor:
    """Decode :func:`gap_to_pref_prob`: ``Δ = 2·pref_prob - 1`` (hard labels give Δ = 1)."""
    return 2.0 * pref_prob - 1.0


class CaPO(PairObjective):
    """Calibrated Preference Optimization (Lee et al., CVPR 2025, arXiv 2502.02588), reconstructed.

    No official code exists (METHODS §11.4); the loss below follows the paper's project page and
    secondary notes, and its mapping onto our tensors is ours. Per pair::

        Δ      = R_ca(x⁺) - R_ca(x⁻)                     # calibrated gap, from pref_prob: 2p - 1
        w_t    = sigmoid(b - λ_t),  λ_t = log(ā_t / (1 - ā_t))   # more weight at high noise
        g      = -0.5 · β · w_t · ((mse_w - ref_mse_w) - (mse_l - ref_mse_l))   # implicit gap
        loss   = mean((Δ - g)²)                          # IPO-style regression, per-pair target

    ``g / w_t`` is exactly Diffusion-DPO's ``inside`` (same t and ε for both images, MSE
    averaged over C, h, w), so ``β`` has DiffusionDPO's −0.5·β convention. The weight w_t
    multiplies the implicit reward (the sigmoid-weighted ELBO of Kingma & Gao), not the squared
    residual: where it sits is not published.

    The calibrated gap travels in ``pref_prob`` as ``(1 + Δ) / 2`` (:func:`gap_to_pref_prob`;
    :mod:`lightning_pref.data.calibrated` writes it as the pair folder's ``label``), so no new
    field is needed. Hard labels (p = 1) give Δ = 1.

    Unpublished constants, chosen here:

    - ``beta = 5000``: Diffusion-DPO's official value, so ``implicit_gap`` reads on the scale of
      DPO's ``inside``. The fixed point ``g = Δ ≤ 1`` is where DPO's loss still pulls
      (``-logsigmoid(1) = 0.31``), so at equal β CaPO moves the model less than DPO; a smaller β
      (1000-2000) lets it move further. A separate "implicit-reward scale" would only rescale β
      (the optimum depends on their ratio), so there is none.
    - ``logsnr_shift = 1.5``: b of the sigmoid weighting, from the paper (published).

    The noise schedule for λ_t: DDPM betas given by ``beta_schedule, beta_start, beta_end,
    num_train_timesteps`` (default SD1.x's scaled-linear 0.00085 → 0.012; MiniPick uses
    ``linear`` 1e-4 → 0.02), or the policy's own ``alphas_cumprod`` via :meth:`bind_schedule`.

    Args:
        beta: β in the −0.5·β convention (not published; see above).
        logsnr_shift: b in ``w_t = sigmoid(b - λ_t)``.
        weighting: apply w_t; False sets w_t = 1 (an unweighted ablation).
        beta_schedule: diffusers ``beta_schedule`` of the training noise schedule.
        beta_start: first beta of the schedule.
        beta_end: last beta of the schedule.
        num_train_timesteps: length of the schedule.
    """

    def __init__(
        self,
        beta: float = 5000.0,
        logsnr_shift: float = 1.5,
        weighting: bool = True,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        self.beta, self.logsnr_shift, self.weighting = beta, logsnr_shift, weighting
        from diffusers import DDPMScheduler

        schedule = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
        )
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone().float(), False)

    def bind_schedule(self, alphas_cumprod: Tensor) -> None:
        """Use the policy's ``alphas_cumprod`` ``[T]`` for λ_t instead of the configured one."""
        self.alphas_cumprod = alphas_cumprod.detach().clone().float()

    def timestep_weight(self, timesteps: Tensor) -> Tensor:
        """``w_t = sigmoid(b - λ_t)`` ``[B]`` (ones when ``weighting`` is off)."""
        a = self.alphas_cumprod.to(timesteps.device)[timesteps]  # [B]
        if not self.weighting:
            return torch.ones_like(a)
        return torch.sigmoid(self.logsnr_shift - (a / (1 - a)).log())

    def forward(self, pair: DenoisePair) -> ObjectiveOutput:
        """Return the CaPO loss; metrics as DPO plus the mean gaps and weight."""
        terms = dpo_terms(pair)
        weight = self.timestep_weight(pair.timesteps).to(terms["diff"].dtype)  # [B]
        implicit_gap = -0.5 * self.beta * weight * terms["diff"]  # [B]
        gap = pref_prob_to_gap(pair.pref_prob.to(implicit_gap.dtype))  # [B]
        loss = (gap - implicit_gap).pow(2).mean()
        metrics = dpo_metrics(terms, implicit_gap)
        metrics["calibrated_gap"] = gap.mean().detach()
        metrics["implicit_gap"] = implicit_gap.mean().detach()
        metrics["timestep_weight"] = weight.mean().detach()
        return ObjectiveOutput(loss, metrics)
