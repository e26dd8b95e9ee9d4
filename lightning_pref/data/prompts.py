"""Prompts for on-policy methods: a text/JSON file, Pick-a-Pic captions, or a list."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lightning_pref.data.parquet import resolve_data_files
from lightning_pref.data.prompt_files import PROMPT_SUFFIXES, read_prompt_file
from lightning_pref.data.sampler import ResumableDataLoader, ResumableSampler
from lightning_pref.errors import DataError
from lightning_pref.training.seeding import resolve_seed
from lightning_pref.types import PromptBatch

__all__ = ["PromptDataModule", "PromptList", "load_prompts"]


def _from_parquet(spec: str) -> list[str]:
    import pyarrow.parquet as pq

    seen: dict[str, None] = {}
    for file in resolve_data_files(spec, "prompts"):
        for caption in pq.read_table(file, columns=["caption"]).column("caption").to_pylist():
            seen.setdefault(str(caption), None)  # unique, in first-seen order
    return list(seen)


def load_prompts(
    source: str | Sequence[str], category: str | None = None, challenge: str | None = None
) -> list[str]:
    """Read prompts, dropping empty lines and surrounding whitespace.

    Args:
        source: a list of prompts; a prompt file (:mod:`lightning_pref.data.prompt_files`:
            ``.txt``, ``.json`` such as SPO's 4000 training prompts, PartiPrompts ``.tsv``,
            DrawBench ``.csv``); or Pick-a-Pic parquet files, globs or folders (the unique values
            of the ``caption`` column).
        category: keep PartiPrompts' or DrawBench's rows of this category.
        challenge: keep PartiPrompts' rows of this challenge.

    Raises:
        DataError: the source is missing, unreadable or holds no prompts.
    """
    if not isinstance(source, str):
        prompts = [str(p).strip() for p in source]
    elif Path(source).suffix.lower() in PROMPT_SUFFIXES and Path(source).suffix != ".parquet":
        prompts = read_prompt_file(source, category, challenge)
    else:
        prompts = [p.strip() for p in _from_parquet(source)]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise DataError(f"no prompts in {source if isinstance(source, str) else 'the list'}")
    return prompts


class PromptList(Dataset):
    """A map-style dataset of prompts; accepts the ``(epoch, index)`` keys of ResumableSampler."""

    def __init__(self, prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, key: int | tuple[int, int]) -> str:
        return self.prompts[key[1] if isinstance(key, tuple) else key]


def _collate(captions: list[str]) -> PromptBatch:
    return PromptBatch(list(captions))


class PromptDataModule(L.LightningDataModule):
    """Batches of prompts for on-policy generation (SPO, TailorPO, D3PO).

    Training prompts are shuffled per epoch with a seed and sharded across ranks (each rank
    generates its own share), and the loader resumes mid-epoch exactly. Validation prompts are not
    sharded and keep their order. Run the trainer with ``use_distributed_sampler=False``.

    Args:
        train_prompts: see :func:`load_prompts` (a file, Pick-a-Pic parquet, or a list).
        val_prompts: the same for validation; None disables validation.
        batch_size: prompts per generation round and per device (SPO SD1.5: 10).
        val_batch_size: prompts per validation round; default ``batch_size``.
        max_val_prompts: use only the first this many validation prompts.
        seed: seed of the shuffle; None: the run's ``--seed_everything``.
        category: keep the training prompts of this category (PartiPrompts .tsv, DrawBench .csv).
        challenge: keep the training prompts of this challenge (PartiPrompts .tsv).
    """

    def __init__(
        self,
        train_prompts: str | list[str] | None = None,
        val_prompts: str | list[str] | None = None,
        batch_size: int = 10,
        val_batch_size: int | None = None,
        max_val_prompts: int | None = None,
        seed: int | None = None,
        category: str | None = None,
        challenge: str | None = None,
    ) -> None:
        super().__init__()
        self.train_prompts, self.val_prompts = train_prompts, val_prompts
        self.category, self.challenge = category, challenge
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.max_val_prompts, self.seed = max_val_prompts, resolve_seed(seed)
        self.train_set: PromptList | None = None
        self.val_set: PromptList | None = None

    def load_train(self) -> list[str]:
        """The training prompts (subclasses may generate them)."""
        if self.train_prompts is None:
            raise DataError("no training prompts: pass --data.init_args.train_prompts=<file>")
        return load_prompts(self.train_prompts, self.category, self.challenge)

    def load_val(self) -> list[str] | None:
        """The validation prompts, or None."""
        return None if self.val_prompts is None else load_prompts(self.val_prompts)

    def setup(self, stage: str | None = None) -> None:
        """Read the prompt lists."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = PromptList(self.load_train())
        if stage in (None, "fit", "validate") and self.val_set is None:
            val = self.load_val()
            if val is not None:
                self.val_set = PromptList(val[: self.max_val_prompts])

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled, rank-sharded, resumable prompt batches (``drop_last=True``)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        if len(self.train_set) < self.batch_size:
            raise DataError(
                f"{len(self.train_set)} training prompts are fewer than "
                f"batch_size={self.batch_size}"
            )
        sampler = ResumableSampler(len(self.train_set), seed=self.seed, shuffle=True)
        return ResumableDataLoader(
            self.train_set,
            sampler=sampler,
            batch_size=self.batch_size,
            collate_fn=_collate,
            drop_last=True,
        )

    def val_dataloader(self) -> Any:
        """Validation prompt batches in order, or ``[]``."""
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set, batch_size=self.val_batch_size, shuffle=False, collate_fn=_collate
        )
