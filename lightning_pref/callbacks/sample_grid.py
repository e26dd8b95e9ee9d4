"""SampleGrid: images for fixed prompts and seeds in TensorBoard while a run trains."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.models.sampling import derive_seed, sample_seeded

__all__ = ["SampleGrid", "tile_images"]


def tile_images(images: Tensor, scale: int = 4) -> Tensor:
    """One row of images in [-1, 1] ``[N, 3, H, W]`` as a uint8 ``[3, H', W']`` grid.

    Each image is upscaled ``scale`` times (nearest neighbour), with 2 px white gutters.
    """
    n, h, w = len(images), images.shape[-2] * scale, images.shape[-1] * scale
    grid = Image.new("RGB", (n * (w + 2) + 2, h + 4), (255, 255, 255))
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for col, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        tile = Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST)
        grid.paste(tile, (2 + col * (w + 2), 2))
    return torch.from_numpy(np.array(grid)).permute(2, 0, 1)


class SampleGrid(Callback):
    """Samples of fixed prompts with fixed seeds in TensorBoard, every ``every_n_steps``.

    Before the first step, every ``every_n_steps`` optimizer steps and at the end, the row of
    images goes to ``samples/grid`` (the prompts to ``samples/prompts``), so the samples of one
    run, and of runs with the same prompts, line up.

    Args:
        prompts: the prompts; None: the captions of the first validation batch (up to
            ``max_prompts``).
        every_n_steps: sampling interval in optimizer steps.
        num_steps: DDIM steps (η 0).
        guidance_scale: classifier-free guidance weight.
        seed: image ``i`` is seeded by ``(seed, i)``, the same at every step.
        max_prompts: at most this many prompts (columns).
        scale: upscaling of each image in the grid (16 px MiniPick samples stay visible).

    Rank 0 samples; the policy runs in eval mode without gradients and the training randomness is
    untouched (the samples draw from their own generators). Off, with a warning, under FSDP
    and DeepSpeed, where rank 0 does not hold the whole model.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        every_n_steps: int = 100,
        num_steps: int = 10,
        guidance_scale: float = 5.0,
        seed: int = 0,
        max_prompts: int = 8,
        scale: int = 4,
    ) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"SampleGrid: every_n_steps must be >= 1, got {every_n_steps}")
        self.prompts = None if prompts is None else list(prompts)[:max_prompts]
        self.every_n_steps, self.num_steps = every_n_steps, num_steps
        self.guidance_scale, self.seed = guidance_scale, seed
        self.max_prompts, self.scale = max_prompts, scale
        self._last_step = -1
        self._enabled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Switch off, with a warning, under sharded strategies."""
        self._enabled = not isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))
        if not self._enabled:
            rank_zero_warn("SampleGrid is off: it does not sample under FSDP or DeepSpeed yet")

    def _default_prompts(self, trainer: Trainer) -> list[str] | None:
        """The captions of the first validation batch (a fresh loader: training is untouched)."""
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        if loader is None:
            return None
        batch = next(iter(loader), None)
        return None if batch is None else list(batch.captions)[: self.max_prompts]

    @torch.no_grad()
    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> Tensor | None:
        """Sample the prompts now and log the grid at the current step; returns the grid."""
        self._last_step = trainer.global_step
        if not self._enabled:
            return None
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if not trainer.is_global_zero or logger is None:
            return None
        if self.prompts is None:
            self.prompts = self._default_prompts(trainer)
            if self.prompts is None:
                self._enabled = False
                rank_zero_warn(
                    "SampleGrid is off: no validation data to take prompts from; pass prompts"
                )
                return None
        policy = pl_module.policy
        was_training = policy.training
        policy.eval()
        seeds = [derive_seed(self.seed, i) for i in range(len(self.prompts))]
        images = sample_seeded(policy, self.prompts, seeds, self.num_steps, self.guidance_scale)
        policy.train(was_training)
        grid = tile_images(images, self.scale)
        logger.experiment.add_image("samples/grid", grid, trainer.global_step, dataformats="CHW")
        legend = "  \n".join(f"{i + 1}. {p}" for i, p in enumerate(self.prompts))
        logger.experiment.add_text("samples/prompts", legend, trainer.global_step)
        return grid

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The starting model's samples."""
        self.log_samples(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """Sample when the step reaches a multiple of ``every_n_steps``."""
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The final model's samples."""
        if trainer.global_step != self._last_step:
            self.log_samples(trainer, pl_module)
