"""Rendered MiniPick scenes of the training prompts: the data the base model is pretrained on."""

from __future__ import annotations

import hashlib
import random

import torch
from lightning import LightningDataModule
from torch.utils.data import Dataset

from lightning_pref.data.sampler import ResumableDataLoader, ResumableSampler
from lightning_pref.minipick.world import Scene, caption, render, scenes_for, split_specs
from lightning_pref.types import ImagePairBatch

__all__ = ["SceneDataModule"]


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:7], "little")


class _SceneDataset(Dataset):
    """Index → a train-split scene with random nuisances, fixed by (seed, epoch, index)."""

    def __init__(self, num_scenes: int, seed: int) -> None:
        self.specs = split_specs("train")
        self.num_scenes = num_scenes
        self.seed = seed

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, key: tuple[int, int]) -> tuple[Scene, int]:
        epoch, index = key
        rng = random.Random(_seed_of(self.seed, epoch, index))
        spec = self.specs[rng.randrange(len(self.specs))]
        return scenes_for([spec], seed=rng.getrandbits(31))[0], rng.getrandbits(31)


class _RenderCollate:
    """Renders a list of scenes into an ``ImagePairBatch`` (winner = loser = the render)."""

    def __init__(self, image_size: int, proportion_empty_prompts: float, seed: int) -> None:
        self.image_size = image_size
        self.proportion_empty_prompts = proportion_empty_prompts
        self.seed = seed

    def __call__(self, items: list[tuple[Scene, int]]) -> ImagePairBatch:
        scenes = [scene for scene, _ in items]
        draws = [random.Random(draw).random() for _, draw in items]
        pixels = render(scenes, self.image_size, seed=_seed_of(self.seed, items[0][1]))
        captions = [
            "" if u < self.proportion_empty_prompts else caption(scene)
            for scene, u in zip(scenes, draws, strict=True)
        ]
        return ImagePairBatch(pixels, pixels, captions, torch.ones(len(scenes)))


class SceneDataModule(LightningDataModule):
    """Rendered MiniPick scenes of the training prompts, for pretraining the base model with SFT.

    Args:
        image_size: side of the rendered images in pixels.
        num_scenes: scenes per epoch (each epoch draws new nuisances).
        batch_size: scenes per batch.
        proportion_empty_prompts: captions replaced by "" so the model learns the unconditional
            branch that classifier-free guidance needs.
        seed: seed of the scene stream.
    """

    def __init__(
        self,
        image_size: int = 16,
        num_scenes: int = 65536,
        batch_size: int = 64,
        proportion_empty_prompts: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.num_scenes = num_scenes
        self.batch_size = batch_size
        self.proportion_empty_prompts = proportion_empty_prompts
        self.seed = seed

    def train_dataloader(self) -> ResumableDataLoader:
        """Resumable, shuffled, rank-sharded batches of rendered scenes."""
        dataset = _SceneDataset(self.num_scenes, self.seed)
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(len(dataset), seed=self.seed),
            collate_fn=_RenderCollate(self.image_size, self.proportion_empty_prompts, self.seed),
            drop_last=True,
        )
