"""AI-feedback relabelling of preference pairs by a scorer (Diffusion-DPO ``--choice_model``).

Diffusion-DPO (METHODS §1.2; official ``train.py``, ``choice_model_says_flip``) can replace the
human label by a reward model's choice: both images of a pair are scored against the caption and
the pair is flipped when ``score(jpg_1) > score(jpg_0)``, so the higher-scored image is the winner
and a tie keeps the order. The official code supports batch size 1 only and scores the original
caption (before empty-prompt dropout); :func:`relabel_pairs` does a whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lightning_pref.scoring.base import Scorer
from lightning_pref.types import ImagePairBatch

__all__ = ["Relabelled", "relabel_pairs"]


@dataclass
class Relabelled:
    """A relabelled batch, which pairs were swapped and the scores behind the decision."""

    batch: ImagePairBatch  # winner = the higher-scored image; ties keep the incoming order
    swapped: Tensor  # [B] bool, True where the incoming loser became the winner
    score_w: Tensor  # [B] score of the (new) winner
    score_l: Tensor  # [B] score of the (new) loser

    @property
    def num_swapped(self) -> int:
        """How many pairs were swapped."""
        return int(self.swapped.sum())


def relabel_pairs(
    batch: ImagePairBatch,
    scorer: Scorer,
    captions: Sequence[str] | None = None,
    hard_labels: bool = True,
) -> Relabelled:
    """Orders every pair by ``scorer``: swaps ``_w``/``_l`` where the loser scores strictly higher.

    Args:
        batch: pairs as images in [-1, 1] with captions.
        scorer: the AI judge; called once, without gradients and in eval mode (its train/eval
            flag is restored afterwards), on the ``2B`` images.
        captions: captions to score with; None = ``batch.captions``. Pass the captions from
            before empty-prompt dropout when the data side applies it (the official code scores
            the dataset caption, not the dropped one).
        hard_labels: True sets ``pref_prob`` to 1 (a reward model's choice is a hard label, as
            in Diffusion-DPO); False keeps ``p`` for kept pairs and uses ``1 - p`` for swapped ones.

    Returns:
        The relabelled batch (new tensors; the input batch is not modified), the swap mask and
        the scores of the new winner and loser.
    """
    num = batch.pixels_w.shape[0]
    texts = list(batch.captions if captions is None else captions)
    if len(texts) != num:
        raise ValueError(f"got {num} pairs but {len(texts)} captions")
    was_training = scorer.training  # a parent's .train() reaches the scorer: no dropout here
    scorer.eval()
    try:
        with torch.no_grad():
            scores = scorer(torch.cat([batch.pixels_w, batch.pixels_l]), texts + texts)  # [2B]
    finally:
        scorer.train(was_training)
    score_w, score_l = scores.float().reshape(2, num)  # [B] each, incoming order
    swapped = score_l > score_w  # [B] strict: ties keep the incoming order
    mask = swapped.to(batch.pixels_w.device).view(-1, 1, 1, 1)
    pixels_w = torch.where(mask, batch.pixels_l, batch.pixels_w)  # [B, 3, H, W]
    pixels_l = torch.where(mask, batch.pixels_w, batch.pixels_l)
    flip = swapped.to(batch.pref_prob.device)
    if hard_labels:
        pref_prob = torch.ones_like(batch.pref_prob)  # [B]
    else:
        pref_prob = torch.where(flip, 1 - batch.pref_prob, batch.pref_prob)
    out = replace(batch, pixels_w=pixels_w, pixels_l=pixels_l, pref_prob=pref_prob)
    new_w = torch.where(swapped, score_l, score_w)  # [B]
    new_l = torch.where(swapped, score_w, score_l)
    return Relabelled(out, swapped, new_w, new_l)
