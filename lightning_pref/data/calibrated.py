"""CaPO's offline pairs: calibrated rewards, Pareto-front pair selection, a pair-folder CSV.

CaPO (METHODS §11.4) samples N images per prompt from the pretrained model, scores each with L
reward models, and calibrates every score against the prompt's other samples::

    R_ca^j(x_i) = 1/(N-1) · Σ_{k≠i} sigmoid(R^j(x_i) - R^j(x_k))        ∈ [0, 1]

(:func:`calibrated_rewards`), the mean probability, under a Bradley-Terry model with the raw
score as logit, that ``x_i`` beats another sample of its prompt. With one reward the pair is the
max against the min; with several, winners come from the upper Pareto front and losers from the
lower one (:func:`select_pairs`). The pair's target is the gap of the calibrated rewards averaged
over the L rewards, ``Δ = mean_j R_ca^j(x⁺) - mean_j R_ca^j(x⁻)``, written as the label
``(1 + Δ) / 2`` of a :class:`~lightning_pref.data.PairFolderDataModule` CSV
(:func:`write_pair_csv`), which :class:`~lightning_pref.objectives.CaPO` decodes from
``pref_prob``.

Reconstructed (no official code): the lower front is the set of samples that no other sample is
worse than on every reward (the non-dominated set under minimisation); a sample on both fronts
only counts as a winner; pairs whose averaged gap is not positive are dropped (the paper draws one
random pair per step; here ``pairs_per_prompt`` pairs are drawn once, with a seed).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_pref.errors import DataError
from lightning_pref.objectives.capo import gap_to_pref_prob

__all__ = [
    "CalibratedPair",
    "calibrated_pairs",
    "calibrated_rewards",
    "pareto_front",
    "select_pairs",
    "write_pair_csv",
]


@dataclass(frozen=True)
class CalibratedPair:
    """One selected pair of a prompt's samples, winner first."""

    prompt: int  # index of the prompt
    index_w: int  # sample index of x⁺ within the prompt
    index_l: int  # sample index of x⁻
    gap: float  # Δ = mean_j R_ca^j(x⁺) - mean_j R_ca^j(x⁻) > 0


def calibrated_rewards(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """Each sample's mean win probability against the other samples of its prompt, per reward.

    Args:
        scores: ``[..., N, L]`` raw rewards of N samples of one prompt (leading dims: prompts)
            under L reward models.
        temperature: divides score differences; 1.0 is the paper's formula (not in the paper:
            for rewards on a [0, 1] scale the sigmoid barely moves from 0.5 otherwise).

    Returns:
        ``[..., N, L]`` ``R_ca^j(x_i) = 1/(N-1) Σ_{k≠i} sigmoid((R^j_i - R^j_k) / temperature)``.
    """
    n = scores.shape[-2]
    if n < 2:
        raise DataError(f"calibration needs at least 2 samples per prompt, got {n}")
    s = scores.double()
    wins = torch.sigmoid((s.unsqueeze(-2) - s.unsqueeze(-3)) / temperature)  # [..., N, N, L]
    # wins[..., i, k, j] = sigmoid(R_i - R_k); the diagonal is sigmoid(0) = 0.5 exactly
    return ((wins.sum(dim=-2) - 0.5) / (n - 1)).to(scores.dtype)


def pareto_front(values: Tensor, upper: bool = True) -> list[int]:
    """Indices of the non-dominated rows of ``values`` ``[N, L]``, in index order.

    Row a dominates row b (``upper``) if it is ≥ b on every column and > on one; the upper front
    holds the rows no other row dominates. ``upper=False`` gives the lower front: the rows no
    other row is ≤ on every column and < on one. Equal rows do not dominate each other.
    """
    v = values if upper else -values
    geq = (v.unsqueeze(1) >= v.unsqueeze(0)).all(dim=-1)  # [N, N]: a ≥ b everywhere
    gt = (v.unsqueeze(1) > v.unsqueeze(0)).any(dim=-1)  # [N, N]: a > b somewhere
    dominated = (geq & gt).any(dim=0)  # [N]: some a dominates b
    return [i for i in range(values.shape[0]) if not bool(dominated[i])]


def select_pairs(calibrated: Tensor) -> list[tuple[int, int, float]]:
    """CaPO's candidate pairs of one prompt: ``(index_w, index_l, gap)``, gap > 0.

    Args:
        calibrated: ``[N, L]`` calibrated rewards of the prompt's N samples.

    Returns:
        Every (upper-front, lower-front) pair with a positive averaged gap, sorted by
        ``(index_w, index_l)``. With one reward this is max against min (all of them on ties).
    """
    upper = pareto_front(calibrated, upper=True)
    lower = [i for i in pareto_front(calibrated, upper=False) if i not in upper]
    mean = calibrated.double().mean(dim=-1)  # [N]
    pairs = [(w, lo, float(mean[w] - mean[lo])) for w in upper for lo in lower]
    return [p for p in pairs if p[2] > 0]


def calibrated_pairs(
    scores: Tensor, pairs_per_prompt: int | None = None, seed: int = 0, temperature: float = 1.0
) -> list[CalibratedPair]:
    """Calibrate, select and (optionally) subsample pairs for every prompt.

    Args:
        scores: ``[P, N, L]`` raw rewards: P prompts, N samples each, L reward models.
        pairs_per_prompt: keep this many pairs per prompt, drawn without replacement with a
            generator seeded by ``(seed, prompt)``; None keeps them all.
        seed: seed of the draws.
        temperature: see :func:`calibrated_rewards`.

    Returns:
        The pairs, prompt by prompt.
    """
    if scores.dim() != 3:
        raise DataError(f"scores must be [prompts, samples, rewards], got {tuple(scores.shape)}")
    calibrated = calibrated_rewards(scores, temperature)  # [P, N, L]
    out: list[CalibratedPair] = []
    for p in range(scores.shape[0]):
        pairs = select_pairs(calibrated[p])
        if pairs_per_prompt is not None and len(pairs) > pairs_per_prompt:
            rng = np.random.default_rng(np.random.SeedSequence([seed, p]))
            keep = sorted(rng.choice(len(pairs), pairs_per_prompt, replace=False).tolist())
            pairs = [pairs[k] for k in keep]
        out += [CalibratedPair(p, w, lo, gap) for w, lo, gap in pairs]
    return out


def write_pair_csv(
    path: str | Path,
    captions: Sequence[str],
    image_paths: Sequence[Sequence[str]],
    pairs: Sequence[CalibratedPair],
    split: str = "train",
) -> Path:
    """Write the pairs as a :class:`~lightning_pref.data.PairFolderDataModule` CSV.

    Args:
        path: the CSV to write (``pairs.csv`` in the image folder, usually).
        captions: one caption per prompt.
        image_paths: per prompt, the N image files (relative to the CSV's folder, or absolute).
        pairs: from :func:`calibrated_pairs`.
        split: the ``split`` column (``train`` or ``validation``).

    Returns:
        The path written. The ``label`` is ``(1 + Δ) / 2`` (:func:`gap_to_pref_prob`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "image_w", "image_l", "label", "split"])
        for pair in pairs:
            files = image_paths[pair.prompt]
            label = float(gap_to_pref_prob(torch.tensor(pair.gap, dtype=torch.float64)))
            row = [captions[pair.prompt], files[pair.index_w], files[pair.index_l]]
            writer.writerow([*row, repr(label), split])
    return path
