"""Pick-a-Pic rows to winner-first image pairs: map-style and streaming datasets plus the collate.

One row of Pick-a-Pic v2 holds ``caption, jpg_0, jpg_1, label_0`` (1/0, or 0.5/0.5 for a tie).
This is the one place where ``jpg_0/label_0`` become ``_w/_l`` (DiffusionDPO/train.py swaps when
``label_0 == 0``; with :class:`~lightning_pref.data.scored.ScoreLabels`, SmPO's scores decide).
A row that cannot be used (undecodable or missing image bytes, a label that is not a number in
[0, 1], a NaN score) becomes ``None``; :class:`PairCollate` drops it and counts it in
``ImagePairBatch.num_skipped``, so a bad row never stops training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lightning_pref.data.sampler import dist_rank_world
from lightning_pref.data.scored import ScoreLabels
from lightning_pref.data.transforms import ImageTransform, decode_image
from lightning_pref.types import ImagePairBatch

__all__ = [
    "PairBuilder",
    "PairCollate",
    "PairSample",
    "PickAPicPairs",
    "PickAPicStream",
    "SkipLogger",
    "label_status",
    "sample_rng",
]

logger = logging.getLogger("lightning_pref.data")
MAX_SKIP_WARNINGS = 5  # per dataset object and process; later skips are only counted


@dataclass
class PairSample:
    """One decoded preference pair, winner first."""

    pixels_w: Tensor  # [3, H, W] preferred image in [-1, 1]
    pixels_l: Tensor  # [3, H, W]
    caption: str  # "" where empty-prompt dropout fired
    pref_prob: float  # P(w ≻ l): 1.0 hard, 0.5 kept tie, sigmoid(n_w - n_l) score labels
    raw_caption: str | None = None  # the caption before empty-prompt dropout


def label_status(value: Any) -> str:
    """Classifies ``label_0`` as ``"hard"`` (0 or 1), ``"soft"`` (in (0, 1)) or ``"bad"``."""
    try:
        label = float(value)
    except (TypeError, ValueError):
        return "bad"
    if not math.isfinite(label) or not 0.0 <= label <= 1.0:
        return "bad"
    return "hard" if label in (0.0, 1.0) else "soft"


def sample_rng(*keys: int) -> np.random.Generator:
    """Returns a generator seeded from non-negative integer keys, e.g. (seed, epoch, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


@dataclass
class PairBuilder:
    """Turns one raw row into a :class:`PairSample` (winner first, dropout, transforms)."""

    transform: ImageTransform
    """Applied to the winner, then the loser, with the same generator (independent draws)."""
    proportion_empty_prompts: float = 0.0
    """Probability that the caption becomes "" (one draw per pair; 0 for validation)."""
    score_labels: ScoreLabels | None = None
    """SmPO: order by ``score_0``/``score_1`` and smooth ``pref_prob`` (resolved constants)."""

    def order(self, row: Mapping[str, Any]) -> tuple[bool, float]:
        """``(swap, pref_prob)``: ``swap`` means ``jpg_1`` is the winner.

        Without ``score_labels``: the human label (DiffusionDPO swaps when ``label_0 < 0.5``)
        and ``pref_prob = max(label_0, 1 - label_0)``. With it: human ties are refused and the
        scores decide (:meth:`ScoreLabels.label`).

        Raises:
            ValueError: If the label (or, with ``score_labels``, a score) is unusable.
        """
        status = label_status(row["label_0"])
        if status == "bad":
            raise ValueError(f"label_0 is not a number in [0, 1]: {row['label_0']!r}")
        label_0 = float(row["label_0"])
        if self.score_labels is None:
            return label_0 < 0.5, max(label_0, 1.0 - label_0)
        if status != "hard":
            raise ValueError(f"label_0 is a tie ({label_0}); score labels need 0 or 1")
        return self.score_labels.label(row.get("score_0"), row.get("score_1"))

    def __call__(self, row: Mapping[str, Any], rng: np.random.Generator) -> PairSample:
        """Builds the pair.

        Args:
            row: A Pick-a-Pic row with ``caption, jpg_0, jpg_1, label_0`` (and ``score_0,
                score_1`` with ``score_labels``).
            rng: Generator for the dropout draw, then the winner's and the loser's transforms.

        Returns:
            The decoded pair.

        Raises:
            ValueError: If the label, a score or an image is unusable (the caller skips the row).
        """
        swap, pref_prob = self.order(row)
        jpg_w, jpg_l = (row["jpg_1"], row["jpg_0"]) if swap else (row["jpg_0"], row["jpg_1"])
        raw = caption = "" if row["caption"] is None else str(row["caption"])
        if rng.random() < self.proportion_empty_prompts:
            caption = ""
        image_w, image_l = decode_image(jpg_w), decode_image(jpg_l)
        pixels_w = self.transform(image_w, rng)  # [3, R, R]
        pixels_l = self.transform(image_l, rng)  # [3, R, R]
        return PairSample(pixels_w, pixels_l, caption, pref_prob, raw)


@dataclass
class PairCollate:
    """Stacks samples into an :class:`ImagePairBatch`, dropping and counting ``None`` rows."""

    resolution: int
    """Image side, used for the empty ``[0, 3, R, R]`` batch when every row was bad."""

    def __call__(self, samples: list[PairSample | None]) -> ImagePairBatch:
        """Collates one batch.

        Args:
            samples: Decoded pairs, ``None`` for skipped rows.

        Returns:
            The batch; B may be 0, in which case the model side skips it.
        """
        good = [s for s in samples if s is not None]
        if not good:
            empty = torch.zeros(0, 3, self.resolution, self.resolution)  # [0, 3, R, R]
            return ImagePairBatch(empty, empty.clone(), [], torch.zeros(0), len(samples))
        pixels_w = torch.stack([s.pixels_w for s in good])  # [B, 3, R, R]
        pixels_l = torch.stack([s.pixels_l for s in good])  # [B, 3, R, R]
        pref_prob = torch.tensor([s.pref_prob for s in good], dtype=torch.float32)  # [B]
        captions = [s.caption for s in good]
        raw = [s.caption if s.raw_caption is None else s.raw_caption for s in good]
        return ImagePairBatch(
            pixels_w, pixels_l, captions, pref_prob, len(samples) - len(good), raw_captions=raw
        )


class SkipLogger:
    """Builds pairs and turns a bad row into ``None`` with a (rate-limited) warning.

    The first ``MAX_SKIP_WARNINGS`` skips of each instance (and process) are logged; all are
    counted in ``num_skipped``.
    """

    def __init__(self, build: PairBuilder) -> None:
        self.build = build
        self.num_skipped = 0

    def __call__(self, row: Mapping[str, Any], rng: np.random.Generator, where: str) -> Any:
        """Builds the pair of ``row``, or returns None when it is unusable.

        Args:
            row: A Pick-a-Pic row (see :meth:`PairBuilder.__call__`).
            rng: The row's generator.
            where: The row's position, for the warning.
        """
        try:
            return self.build(row, rng)
        except ValueError as err:  # decode_image and the label check raise only this
            self.num_skipped += 1
            if self.num_skipped <= MAX_SKIP_WARNINGS:
                logger.warning("skipping Pick-a-Pic row %s: %s", where, err)
            return None


class PickAPicPairs(Dataset):
    """Map-style pairs over a ``datasets.Dataset``; keys are ``index`` or ``(epoch, index)``.

    Ties are removed once, from the ``label_0`` column alone, when the dataset is built. Each
    sample's randomness comes from ``(seed, epoch, index)``, so results do not depend on the
    number or order of workers.
    """

    def __init__(
        self,
        table: Any,
        build: PairBuilder,
        seed: int = 0,
        drop_ties: bool = True,
        max_pairs: int | None = None,
    ) -> None:
        """Creates the dataset.

        Args:
            table: A ``datasets.Dataset`` with the Pick-a-Pic columns (images as raw bytes).
            build: Row-to-pair builder (holds the transforms and the caption dropout).
            seed: Base seed of the per-sample generators.
            drop_ties: Keep only rows whose ``label_0`` is 0 or 1 (the others are counted in
                ``num_ties``; rows with a bad label are kept here and skipped, with a count, when
                loaded).
            max_pairs: Keep only the first this many pairs (after dropping ties).
        """
        self.table = table
        self.seed = seed
        self._make = SkipLogger(build)
        labels = table.data.column("label_0").to_pylist()
        keep = [i for i, v in enumerate(labels) if not drop_ties or label_status(v) != "soft"]
        self.num_ties = len(labels) - len(keep)  # rows dropped as ties
        self.rows = keep[:max_pairs] if max_pairs is not None else keep

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> PairSample | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.rows[index]
        return self._make(self.table[row], sample_rng(self.seed, epoch, index), f"{row}")


class PickAPicStream(IterableDataset):
    """Streaming pairs over a ``datasets.IterableDataset``, resumable for a fixed seed.

    A pass gives each DataLoader worker every W-th parquet shard (``.shard``), shuffles with
    ``.shuffle(seed, buffer_size)`` and ``set_epoch(epoch)``, and splits across ranks with
    ``split_dataset_by_node``. Ties are dropped from the label alone; every other row takes a
    position ``p`` in its worker's stream and is seeded from (seed, epoch, rank, worker, p).

    Resume is exact for a fixed seed, world size and worker count. The DataLoader takes batches
    from workers in turn, so worker ``w`` made batches ``w, w + W, ...``: each worker discards its
    share of the consumed batches without decoding them, and a resumed pass renumbers the workers
    so that the one whose turn came next goes first. The workers are split here rather than by
    ``datasets`` (which ties shards to the physical worker id), and rows are skipped here rather
    than with ``.skip(n)``, which on a shuffled stream freezes the shard order for epochs > 0 and
    splits ``n`` evenly over workers. With fewer shards than workers every worker reads all rows
    and keeps every W-th. Once one worker runs out before the others (shards of very different
    lengths) the turn order changes, and a checkpoint taken after that point resumes approximately.
    """

    def __init__(
        self,
        source: Any,
        build: PairBuilder,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 1000,
        drop_ties: bool = True,
        max_pairs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        """Creates the stream.

        Args:
            source: A ``datasets.IterableDataset`` with the Pick-a-Pic columns.
            build: Row-to-pair builder.
            seed: Shuffle seed and base seed of the per-sample generators.
            shuffle: Shuffle shards and a buffer of rows (training); False keeps file order.
            buffer_size: Rows held by the ``datasets`` shuffle buffer.
            drop_ties: Skip rows whose ``label_0`` is strictly between 0 and 1.
            max_pairs: Stop after this many pairs per worker (validation caps).
            rank: Fixed rank; None reads ``torch.distributed`` when a pass starts.
            world_size: Fixed world size; None reads ``torch.distributed``.
        """
        self.source = source
        self.seed = seed
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.drop_ties = drop_ties
        self.max_pairs = max_pairs
        self.rank, self.world_size = rank, world_size
        self._make = SkipLogger(build)
        self.epoch, self.skip_batches, self.batch_size = 0, 0, 1

    def start_pass(self, epoch: int, skip_batches: int, batch_size: int, num_workers: int) -> None:
        """Sets the epoch and the consumed batches for the next pass (main process)."""
        self.rank, self.world_size = dist_rank_world(self.rank, self.world_size)
        self.epoch, self.skip_batches, self.batch_size = epoch, skip_batches, batch_size

    def _rows(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """Yields the raw rows of one (logical) worker on this rank for the current epoch."""
        from datasets.distributed import split_dataset_by_node

        stream, stride = self.source, 1
        if num_workers > 1 and stream.num_shards >= num_workers:
            stream = stream.shard(num_shards=num_workers, index=worker, contiguous=False)
        elif num_workers > 1:
            stride = num_workers
        if self.shuffle:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        stream.set_epoch(self.epoch)
        rank, world_size = dist_rank_world(self.rank, self.world_size)
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        count = 0
        # .iter() instead of iter(stream): the latter re-shards by the physical worker id.
        for batch in stream.iter(batch_size=64):
            for i in range(len(batch["label_0"])):
                if count % stride == worker % stride:
                    yield {name: values[i] for name, values in batch.items()}
                count += 1

    def __iter__(self) -> Iterator[PairSample | None]:
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (physical + self.skip_batches) % num_workers  # whose turn comes next goes first
        mine = self.skip_batches // num_workers + int(worker < self.skip_batches % num_workers)
        skip = mine * self.batch_size
        rank = self.rank or 0
        position = 0
        for row in self._rows(worker, num_workers):
            if self.drop_ties and label_status(row.get("label_0")) == "soft":
                continue
            if self.max_pairs is not None and position >= self.max_pairs:
                return
            if position >= skip:
                rng = sample_rng(self.seed, self.epoch, rank, worker, position)
                where = f"#{position} of the stream of worker {worker}, rank {rank}"
                yield self._make(row, rng, where)
            position += 1
