"""A user's own preference pairs: a folder of images plus a CSV, as a LightningDataModule.

The CSV (``pairs.csv`` in ``root`` by default) has a header row and the columns

* ``caption``: the prompt both images were generated from (may be empty);
* ``image_w``, ``image_l``: image files, relative to the CSV's folder (or absolute), the
  preferred image first;
* ``label`` (optional): P(image_w ≻ image_l) in [0, 1]; blank or absent means 1.0. A label
  below 0.5 makes ``image_l`` the winner; 0.5 is a tie, dropped unless ``drop_ties=False``;
* ``split`` (optional): ``train`` or ``validation``; blank or absent means ``train``.

Each row becomes the row a Pick-a-Pic v2 shard would hold (``jpg_0`` = the bytes of
``image_w``, ``jpg_1`` = those of ``image_l``, ``label_0`` = ``label``) and goes through the same
:class:`~lightning_pref.data.pairs.PairBuilder`, transforms, collate, seeding and resumable
sampler as :class:`~lightning_pref.data.PickAPicDataModule`, so the same pairs give the same
batches. One difference: only exact ties (0.5) are dropped; other labels strictly between 0 and 1
are kept as soft ``pref_prob`` (Pick-a-Pic has no such labels). A missing or undecodable image
skips its row, counted in ``train/rows_skipped`` like a corrupt Pick-a-Pic row.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from lightning_pref.data.base import PairDataModule
from lightning_pref.data.pairs import PairBuilder, PairCollate, PairSample, SkipLogger, sample_rng
from lightning_pref.data.sampler import ResumableSampler
from lightning_pref.data.transforms import ImageTransform
from lightning_pref.errors import DataError

__all__ = [
    "CSV_COLUMNS",
    "FolderPairs",
    "PairFolderDataModule",
    "PairRecord",
    "check_image_files",
    "read_pair_csv",
]

CSV_COLUMNS = ("caption", "image_w", "image_l")
SPLITS = ("train", "validation")
logger = logging.getLogger("lightning_pref.data")


@dataclass(frozen=True)
class PairRecord:
    """One CSV row, with its image paths resolved against the CSV's folder."""

    caption: str
    path_w: Path  # preferred image (unless label < 0.5)
    path_l: Path
    label: float  # P(w ≻ l) in [0, 1]; NaN (no_images: a bad cell) is skipped when loaded
    where: str  # "pairs.csv line 7", for messages


def _label(value: str | None, where: str) -> float:
    """Parses the ``label`` cell; blank means 1.0."""
    if value is None or not value.strip():
        return 1.0
    try:
        label = float(value)
    except ValueError:
        label = math.nan
    if not math.isfinite(label) or not 0.0 <= label <= 1.0:
        raise DataError(f"{where}: column 'label' must be a number in [0, 1], got {value!r}")
    return label


def _record(row: dict[str, str | None], folder: Path, where: str) -> tuple[str, PairRecord]:
    """Validates one CSV row and returns ``(split, record)``."""
    split = (row.get("split") or "").strip() or "train"
    if split not in SPLITS:
        raise DataError(f"{where}: column 'split' must be train or validation, got {split!r}")
    paths = []
    for column in ("image_w", "image_l"):
        value = (row.get(column) or "").strip()
        if not value:
            raise DataError(f"{where}: column '{column}' is empty")
        paths.append(folder / Path(value).expanduser())
    caption = row.get("caption") or ""
    return split, PairRecord(caption, paths[0], paths[1], _label(row.get("label"), where), where)


def read_pair_csv(path: str | Path) -> dict[str, list[PairRecord]]:
    """Reads a pairs CSV into records per split (``train``, ``validation``), in file order.

    Args:
        path: The CSV file; image paths in it are relative to its folder.

    Returns:
        The records of each split (a split without rows has an empty list).

    Raises:
        DataError: If the file is missing or unreadable, lacks a required column, or a cell is
            invalid (empty image path, label outside [0, 1], unknown split); the message names
            the file, the column and, for a cell, the line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"'{path}': no such CSV file; pass the folder with --data.init_args.root DIR "
            "(and the file name with --data.init_args.csv_file if it is not pairs.csv)"
        )
    records: dict[str, list[PairRecord]] = {split: [] for split in SPLITS}
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise DataError(
                f"'{path}' is missing the column '{missing[0]}' (a pairs CSV needs the header "
                f"{','.join(CSV_COLUMNS)}, optionally label and split)"
            )
        reader.fieldnames = columns
        for row in reader:
            split, record = _record(row, path.parent, f"'{path}' line {reader.line_num}")
            records[split].append(record)
    return records


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it cannot be read (``PairBuilder`` then skips the row)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


class FolderPairs(Dataset):
    """Map-style pairs over CSV records; keys are ``index`` or ``(epoch, index)``.

    Mirrors :class:`~lightning_pref.data.pairs.PickAPicPairs`: ties are removed once when the
    dataset is built, images are read and decoded when a pair is loaded, a row that cannot be
    used becomes ``None`` (counted and logged), and each sample's randomness comes from
    ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        records: Sequence[PairRecord],
        build: PairBuilder,
        seed: int = 0,
        drop_ties: bool = True,
        max_pairs: int | None = None,
    ) -> None:
        """Creates the dataset.

        Args:
            records: The CSV rows of one split.
            build: Row-to-pair builder (holds the transforms and the caption dropout).
            seed: Base seed of the per-sample generators.
            drop_ties: Drop rows labelled exactly 0.5 (counted in ``num_ties``).
            max_pairs: Keep only the first this many pairs (after dropping ties).
        """
        self.seed = seed
        self._make = SkipLogger(build)
        keep = [r for r in records if not (drop_ties and r.label == 0.5)]
        self.num_ties = len(records) - len(keep)  # rows dropped as ties
        self.records = keep[:max_pairs] if max_pairs is not None else keep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> PairSample | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        row = {  # the Pick-a-Pic row this CSV row stands for
            "caption": record.caption,
            "jpg_0": _read_bytes(record.path_w),
            "jpg_1": _read_bytes(record.path_l),
            "label_0": record.label,
        }
        where = f"{record.where} ({record.path_w.name}, {record.path_l.name})"
        return self._make(row, sample_rng(self.seed, epoch, index), where)


def check_image_files(
    records: dict[str, list[PairRecord]],
    csv_path: Path | str,
    hint: str = "image paths are relative to the CSV's folder",
) -> dict[str, int]:
    """Counts, per split, the rows that name a missing image file, and warns with the first one.

    Args:
        records: The CSV's records per split (:func:`read_pair_csv`).
        csv_path: The CSV (or another description of the source), for messages.
        hint: How image paths are found, for the error when none exists.

    Returns:
        The number of rows per split with a missing ``image_w`` or ``image_l`` file.

    Raises:
        DataError: If the CSV has rows but not one of their image files exists (a wrong
            ``root`` or paths not relative to the CSV's folder).
    """
    counts: dict[str, int] = {}
    found = False
    for split, rows in records.items():
        missing = [(r, p) for r in rows for p in (r.path_w, r.path_l) if not p.is_file()]
        found = found or len(missing) < 2 * len(rows)
        counts[split] = len({id(r) for r, _ in missing})
        if missing:
            logger.warning(
                "%d of %d %s rows of '%s' name a missing image file (first: %s, '%s'); they "
                "are skipped and counted in rows_skipped",
                counts[split],
                len(rows),
                split,
                csv_path,
                missing[0][0].where,
                missing[0][1],
            )
    if not found and any(records.values()):
        first = next(r for rows in records.values() for r in rows)
        raise DataError(
            f"'{csv_path}': none of its image files exist (e.g. '{first.path_w}'); {hint}"
        )
    return counts


class PairFolderDataModule(PairDataModule):
    """Preference pairs from a folder of images and a CSV: ``ImagePairBatch``, winner first.

    See the module docstring for the CSV format. Training and validation rows share one CSV and
    are told apart by its ``split`` column; without validation rows there is no validation. The
    training loader resumes mid-epoch exactly (:class:`ResumableDataLoader`); validation is not
    sharded and keeps file order. Run the trainer with ``use_distributed_sampler=False``.
    """

    train_set: FolderPairs | None = None  # built by setup("fit")
    val_set: FolderPairs | None = None  # built by setup("fit"/"validate"); None: no validation

    def __init__(
        self,
        root: str,
        csv_file: str = "pairs.csv",
        drop_ties: bool = True,
        resolution: int = 512,
        random_crop: bool = False,
        hflip: bool = True,
        proportion_empty_prompts: float = 0.2,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        max_val_pairs: int | None = None,
    ) -> None:
        """Configures the data; nothing is read until ``setup``.

        Args:
            root: The folder that holds the CSV.
            csv_file: The CSV's path relative to ``root`` (or absolute).
            drop_ties: Drop pairs labelled 0.5; otherwise they get ``pref_prob`` 0.5.
            resolution: Side of the square training images (512 for SD1.5, 16 for MiniPick).
            random_crop: Random instead of centre crop for training images.
            hflip: Random horizontal flip of each training image (p=0.5, drawn per image); turn
                it off when captions name left and right.
            proportion_empty_prompts: Fraction of training captions set to "" (one draw a pair).
            batch_size: Training pairs per batch and per device.
            val_batch_size: Validation pairs per batch; defaults to ``batch_size``.
            num_workers: DataLoader worker processes.
            seed: Seed of the shuffle and of every per-sample random draw; None: the run's
                ``--seed_everything``.
            max_val_pairs: Use only the first this many validation pairs.
        """
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_val_pairs)
        self.save_hyperparameters()
        self.csv_path = Path(root).expanduser() / Path(csv_file).expanduser()
        self.resolution, self.random_crop, self.hflip = resolution, random_crop, hflip
        self.proportion_empty_prompts, self.drop_ties = proportion_empty_prompts, drop_ties
        self.rows_missing_files: dict[str, int] = {}  # per split, counted at setup

    def _records(self) -> dict[str, list[PairRecord]]:
        """Reads the CSV and counts (once per split) the rows with missing image files."""
        records = read_pair_csv(self.csv_path)
        if not self.rows_missing_files:  # checked once: prepare_data and setup both read it
            self.rows_missing_files = check_image_files(records, self.csv_path)
        return records

    def prepare_data(self) -> None:
        """Checks the CSV and the image paths before any process builds a dataset."""
        self._records()

    def setup(self, stage: str | None = None) -> None:
        """Builds the training (``fit``) and validation (``fit``/``validate``) datasets."""
        records = self._records()
        if stage in (None, "fit") and self.train_set is None:
            if not records["train"]:
                raise DataError(f"'{self.csv_path}' has no training rows (split train or blank)")
            self.train_set = self._make_set(records["train"], train=True)
        if stage in (None, "fit", "validate") and self.val_set is None and records["validation"]:
            self.val_set = self._make_set(records["validation"], train=False)

    def _make_set(self, records: list[PairRecord], train: bool) -> FolderPairs:
        """Wraps one split's records with the training or the validation preprocessing."""
        transform = ImageTransform(
            self.resolution, random_crop=train and self.random_crop, hflip=train and self.hflip
        )
        build = PairBuilder(transform, self.proportion_empty_prompts if train else 0.0)
        max_pairs = None if train else self.max_val_pairs
        return FolderPairs(records, build, self.seed, self.drop_ties, max_pairs)

    def collate_fn(self) -> PairCollate:
        """Stacks decoded pairs into an ``ImagePairBatch``, dropping and counting bad rows."""
        return PairCollate(self.resolution)

    def empty_train_message(self) -> str:
        """The error for a CSV whose training rows are all ties."""
        return f"'{self.csv_path}' has no training pairs left after dropping ties"

    def train_sampler(self, num_samples: int) -> ResumableSampler:
        """The base class's shuffle, refused when it leaves a device no full batch.

        Raises:
            DataError: If there are fewer training pairs per device than ``batch_size``.
        """
        sampler = super().train_sampler(num_samples)
        if len(sampler) < self.batch_size:  # drop_last would leave no batch at all
            raise DataError(
                f"'{self.csv_path}' has {len(sampler)} training pairs per device, fewer than "
                f"batch_size {self.batch_size}; lower --data.init_args.batch_size"
            )
        return sampler
