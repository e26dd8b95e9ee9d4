"""UnpairedModule: training on single images with per-image labels (Diffusion-KTO)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_pref.models.fast import FastPath
from lightning_pref.models.noising import NoisingStrategy
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import ReferenceMode
from lightning_pref.modules.denoising import DenoisingModule
from lightning_pref.objectives.base import UnpairedObjective
from lightning_pref.types import DenoiseLabeled, ImageLabelBatch, ImagePairBatch, ObjectiveOutput

__all__ = ["UnpairedModule", "pairs_to_labeled"]


def pairs_to_labeled(batch: ImagePairBatch, positive_fraction: float) -> ImageLabelBatch:
    """Turn B preference pairs into labelled single images: every winner (+1) and some losers (-1).

    Losers are taken in batch order, ``k = round(B·(1-f)/f)`` of them (capped at B), so that a
    fraction f of the images is desirable, as Diffusion-KTO's sampler draws 80% positives.
    ``f = 0.5`` keeps every loser.
    """
    if not 0.0 < positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
    bsz = batch.pixels_w.shape[0]
    num_l = min(bsz, round(bsz * (1 - positive_fraction) / positive_fraction))
    pixels = torch.cat([batch.pixels_w, batch.pixels_l[:num_l]])  # [B + k, 3, H, W]
    labels = torch.cat([torch.ones(bsz), -torch.ones(num_l)]).to(batch.pixels_w.device)
    captions = list(batch.captions) + list(batch.captions[:num_l])
    return ImageLabelBatch(pixels, captions, labels, batch.num_skipped)


class UnpairedModule(DenoisingModule):
    """Noises single labelled images, runs policy and reference, applies an unpaired objective.

    Reads :class:`ImageLabelBatch` (natively unpaired feedback) or :class:`ImagePairBatch` from any
    pair data module, which :func:`pairs_to_labeled` splits into labelled images. Each image gets
    its own timestep and noise (no pairs to share them).

    Args:
        policy: the diffusion model being tuned.
        objective: an unpaired objective (DiffusionKTO).
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        reference: ``auto``, ``copy`` or ``adapters_off``.
        seed: seed of the per-step generators; None: the run's ``--seed_everything``.
        timestep_range: sample t uniformly in ``[low, high)``; None = the full schedule.
        noising: None = the objective's own (forward noising).
        positive_fraction: share of desirable images when splitting pairs (KTO: 0.8).
        fast: speed options (:class:`~lightning_pref.models.FastPath`); None: the plain path.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: UnpairedObjective,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        reference: ReferenceMode = "auto",
        seed: int | None = None,
        timestep_range: tuple[int, int] | None = None,
        noising: NoisingStrategy | None = None,
        positive_fraction: float = 0.8,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__(
            policy, objective, optimizer, lr_scheduler, reference, seed, timestep_range, noising,
            fast,
        )  # fmt: skip
        if not 0.0 < positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
        self.positive_fraction = positive_fraction
        objective.set_sum_over_ranks(self.sum_over_ranks)  # KTO's reference point spans ranks

    def sum_over_ranks(self, values: Tensor) -> Tensor:
        """``values`` summed elementwise over every rank (``self.all_gather``; one rank: as is)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        return self.all_gather(values).sum(dim=0)

    def to_labeled(self, batch: ImagePairBatch | ImageLabelBatch) -> ImageLabelBatch:
        """The batch as labelled single images."""
        if isinstance(batch, ImagePairBatch):
            return pairs_to_labeled(batch, self.positive_fraction)
        return batch

    def denoise_labeled(self, batch: ImageLabelBatch, generator: torch.Generator) -> DenoiseLabeled:
        """Encode, noise (own t and ε per image), run policy and reference."""
        x0 = self.policy.encode_images(batch.pixels, generator)  # [N, C, h, w]
        embeds = self.policy.encode_prompt(batch.captions)  # [N, L, D]
        t = self.sample_timesteps(x0.shape[0], generator)
        noise = self.sample_noise(x0.shape, generator, x0.dtype)
        x_t, target, t = self.noise(x0, t, noise, embeds, generator)
        pred = self.policy(x_t, t, embeds)
        ref = self.reference_predict(x_t, t, embeds) if self.objective.requires_reference else None
        return DenoiseLabeled(pred, target, ref, batch.labels.to(pred.dtype), t)

    def shared_step(
        self, batch: ImagePairBatch | ImageLabelBatch, stage: str, batch_idx: int
    ) -> ObjectiveOutput:
        """Split pairs if needed, then noise, denoise and score."""
        generator = self.step_generator(stage, batch_idx)
        return self.objective(self.denoise_labeled(self.to_labeled(batch), generator))

    def batch_size(self, batch: ImagePairBatch | ImageLabelBatch) -> int:
        """Pairs (or images) in the batch as it arrives; 0 means skip."""
        if isinstance(batch, ImageLabelBatch):
            return batch.pixels.shape[0]
        return batch.pixels_w.shape[0]
