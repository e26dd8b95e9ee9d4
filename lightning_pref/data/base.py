"""The base of the pair DataModules: one resumable training loader, one validation loader.

The Pick-a-Pic (parquet), folder (images + CSV) and latent-cache DataModules differ in how they
read pairs and build batches, not in how they load them. Each builds ``train_set``/``val_set`` in
``setup`` and names its collate; this class owns the loaders, so the shuffle, the sharding across
ranks, the seeding and the exact mid-epoch resume are the same for all three. Run the trainer with
``use_distributed_sampler=False``: the sampler shards itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_pref.data.sampler import ResumableDataLoader, ResumableSampler
from lightning_pref.errors import DataError
from lightning_pref.training.seeding import resolve_seed

__all__ = ["PairDataModule"]


class PairDataModule(L.LightningDataModule, ABC):
    """A preference-pair DataModule whose training loader resumes mid-epoch exactly.

    Training: a map-style ``train_set`` is shuffled by a :class:`ResumableSampler` seeded with
    ``seed`` (and sharded across ranks); an iterable one (a :class:`ResumableStream`) shuffles and
    shards itself. Both drop the last partial batch. Validation is not sharded: every rank sees
    every validation pair, in file order; without a ``val_set`` there is no validation.
    """

    train_set: Dataset | None = None  # built by setup("fit")
    val_set: Dataset | None = None  # built by setup("fit"/"validate"); None: no validation

    def __init__(
        self,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int,
        seed: int | None,
        max_val_pairs: int | None,
    ) -> None:
        """Stores the loader settings shared by every pair DataModule.

        Args:
            batch_size: Training pairs per batch and per device.
            val_batch_size: Validation pairs per batch; None: ``batch_size``.
            num_workers: DataLoader worker processes.
            seed: Seed of the shuffle and of every per-sample random draw; None: the run's
                ``--seed_everything``.
            max_val_pairs: Use only the first this many validation pairs.
        """
        super().__init__()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.max_val_pairs = num_workers, max_val_pairs
        self.seed = resolve_seed(seed)

    @abstractmethod
    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """The collate function of the training and the validation loader."""

    @abstractmethod
    def empty_train_message(self) -> str:
        """The ``DataError`` message for a map-style ``train_set`` that holds no pairs."""

    def train_sampler(self, num_samples: int) -> ResumableSampler:
        """The seeded, rank-sharding shuffle of a map-style ``train_set`` of ``num_samples``."""
        return ResumableSampler(num_samples, seed=self.seed, shuffle=True)

    def train_dataloader(self) -> ResumableDataLoader:
        """Returns the resumable training loader (``drop_last=True``)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        common: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "collate_fn": self.collate_fn(),
            "drop_last": True,
        }
        if isinstance(self.train_set, IterableDataset):  # Lightning prefetches one batch
            return ResumableDataLoader(self.train_set, consumer_prefetch=1, **common)
        if len(self.train_set) == 0:
            raise DataError(self.empty_train_message())
        sampler = self.train_sampler(len(self.train_set))
        return ResumableDataLoader(self.train_set, sampler=sampler, **common)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Returns the validation loader in file order, or ``[]`` when there is no validation."""
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(),
        )
