"""Pick-a-Pic v2 preference pairs as a LightningDataModule (offline DPO-family training).

Follows DiffusionDPO/train.py: drop ties, put the preferred image first, 20% empty captions
(one draw per pair), resize + centre crop (or random crop) + independent horizontal flips, and
no dropout, random crop or flip for validation. Data comes from local parquet shards (the layout
of ``yuvalkirstain/pickapic_v2``), a local dataset folder, or a ``datasets`` hub name; with
``image_root``, from ``.csv``/``.parquet`` files in the ``*_no_images`` layout plus a local image
folder (:mod:`lightning_pref.data.no_images`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any

from lightning_pref.data.base import PairDataModule
from lightning_pref.data.folder import FolderPairs, check_image_files
from lightning_pref.data.no_images import IMAGE_ROOT_HINT, check_no_images_columns, read_no_images
from lightning_pref.data.pairs import PairBuilder, PairCollate, PickAPicPairs, PickAPicStream
from lightning_pref.data.parquet import (
    check_parquet_columns,
    check_score_columns,
    load_hub,
    local_split_files,
    resolve_data_files,
)
from lightning_pref.data.scored import ScoreLabels
from lightning_pref.data.transforms import ImageTransform
from lightning_pref.errors import DataError

__all__ = ["PickAPicDataModule"]

PairData = PickAPicPairs | PickAPicStream | FolderPairs
logger = logging.getLogger("lightning_pref.data")


class PickAPicDataModule(PairDataModule):
    """Pick-a-Pic v2 pairs: ``ImagePairBatch`` with the preferred image first.

    The training loader is resumable mid-epoch: Lightning saves its ``state_dict`` in checkpoints
    and the resumed run sees exactly the batches the uninterrupted run would have seen (map-style:
    always; streaming: for a fixed seed, world size and worker count). Run the trainer with
    ``use_distributed_sampler=False``; the sampler shards across ranks itself. Validation is not
    sharded: every rank sees every validation pair, in file order.

    Counts made by ``setup`` (per split, ``train``/``validation``; map-style data only):
    ``ties_dropped`` (rows labelled 0.5/0.5 that were dropped) and, with ``image_root``,
    ``rows_missing_files`` (kept rows with an image that maps to no file). Both are logged; rows
    with missing or corrupt images are then skipped when loaded and counted in
    ``ImagePairBatch.num_skipped`` (``train/rows_skipped``).
    """

    train_set: PairData | None = None  # built by setup("fit")
    val_set: PairData | None = None  # built by setup("fit"/"validate"); None: no validation

    def __init__(
        self,
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        dataset_name: str | None = None,
        train_split: str = "train",
        val_split: str = "validation_unique",
        streaming: bool = False,
        resolution: int = 512,
        random_crop: bool = False,
        hflip: bool = True,
        proportion_empty_prompts: float = 0.2,
        drop_ties: bool = True,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        max_val_pairs: int | None = None,
        score_labels: ScoreLabels | None = None,
        image_root: str | None = None,
    ) -> None:
        """Configures the data; nothing is read until ``setup``.

        Args:
            train_files: Training parquet files, globs or folders (a folder means
                ``folder/**/*.parquet``). Takes precedence over ``dataset_name``.
            val_files: Validation parquet files, globs or folders (else ``dataset_name``).
            dataset_name: Hub name (``yuvalkirstain/pickapic_v2``) or folder with ``<split>/`` or
                ``data/<split>-NNNNN-of-NNNNN*`` parquet shards, for splits without files.
            train_split: Split read from ``dataset_name`` for training.
            val_split: Split read from ``dataset_name`` for validation (500 unique prompts in v2).
            streaming: Stream rows instead of converting the data to Arrow first.
            resolution: Side of the square training images (512 for SD1.5, 1024 for SDXL).
            random_crop: Random instead of centre crop for training images.
            hflip: Random horizontal flip of each training image (p=0.5, drawn per image).
            proportion_empty_prompts: Fraction of training captions set to "" (one draw a pair).
            drop_ties: Drop pairs labelled 0.5/0.5; otherwise they get ``pref_prob`` 0.5.
            batch_size: Training pairs per batch and per device.
            val_batch_size: Validation pairs per batch; defaults to ``batch_size``.
            num_workers: DataLoader worker processes.
            seed: Seed of the shuffle and of every per-sample random draw; None: the run's
                ``--seed_everything``.
            max_val_pairs: Use only the first this many validation pairs.
            score_labels: SmPO's label smoothing (METHODS §4.1), for training and validation:
                human ties are dropped (whatever ``drop_ties`` says), the higher ``score_0``/
                ``score_1`` wins and ``pref_prob = sigmoid(n_w - n_l)``. The shards need those
                columns (``python -m lightning_pref score-pairs``); None constants are read from
                their ``scores.json`` at setup.
            image_root: Read ``.csv``/``.parquet`` files in the Pick-a-Pic ``*_no_images`` layout
                with their images in this folder, found by the tail of each stored path or URL
                (:mod:`lightning_pref.data.no_images`). Not with ``streaming`` or ``score_labels``.
        """
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_val_pairs)
        self.save_hyperparameters(ignore=["score_labels"])
        self._set_score_labels(score_labels)
        self.train_files, self.val_files, self.dataset_name = train_files, val_files, dataset_name
        self.train_split, self.val_split, self.streaming = train_split, val_split, streaming
        self.resolution, self.random_crop, self.hflip = resolution, random_crop, hflip
        self.proportion_empty_prompts, self.drop_ties = proportion_empty_prompts, drop_ties
        self._set_image_root(image_root)

    def _set_image_root(self, image_root: str | None) -> None:
        """Keeps ``image_root`` (refused with streaming or score labels) and zeroes the counts."""
        if image_root is not None and (self.streaming or self.score_labels is not None):
            option = "streaming" if self.streaming else "score_labels"
            raise DataError(f"image_root (Pick-a-Pic no_images) does not support {option}")
        self.image_root = image_root
        self.ties_dropped: dict[str, int] = {}  # per split, counted at setup
        self.rows_missing_files: dict[str, int] = {}  # per split, with image_root

    def _set_score_labels(self, score_labels: ScoreLabels | dict[str, Any] | None) -> None:
        """Keeps ``score_labels``, recorded in ``hparams`` as a plain dict."""
        if isinstance(score_labels, dict):  # hparams of a checkpoint hold it as a plain dict
            score_labels = ScoreLabels(**score_labels)
        # A plain dict in hparams, so checkpoints stay loadable with weights_only=True.
        self.hparams["score_labels"] = None if score_labels is None else asdict(score_labels)
        self.score_labels = score_labels
        self._labels: ScoreLabels | None = None  # score_labels with resolved constants

    def _paths(self, files: str | list[str] | None, split: str, arg: str) -> list[str] | None:
        """The parquet files of one split; None for a hub dataset (or no source at all)."""
        if files is not None:
            return resolve_data_files(files, arg)
        if self.dataset_name is None:
            return None
        if os.path.isdir(os.path.expanduser(self.dataset_name)):
            return local_split_files(os.path.expanduser(str(self.dataset_name)), split)
        if str(self.dataset_name).startswith((".", "/", "~")) or str(self.dataset_name).endswith(
            ".parquet"
        ):
            raise DataError(
                f"dataset_name: the data path '{self.dataset_name}' does not exist; pass an "
                "existing folder, a hub name, or files with --data.init_args.train_files"
            )
        return None

    def _load(self, files: str | list[str] | None, split: str, arg: str) -> Any:
        """Returns the ``datasets`` object of one split, or None if no source is configured."""
        import datasets

        if files is None and self.dataset_name is None:
            return None
        if self.image_root is not None:
            return read_no_images(self._no_images_paths(files, split, arg), self.image_root)
        paths = self._paths(files, split, arg)
        if paths is None:
            source = load_hub(str(self.dataset_name), split, self.streaming)
            if self.score_labels is not None:
                check_score_columns(source.column_names or [], f"dataset '{self.dataset_name}'")
            return source
        check_parquet_columns(paths, scored=self.score_labels is not None)
        data_files = {"train": paths}
        return datasets.load_dataset(
            "parquet", data_files=data_files, split="train", streaming=self.streaming
        )

    def _no_images_paths(self, files: str | list[str] | None, split: str, arg: str) -> list[str]:
        """The local no_images files of one split (``image_root`` reads no hub dataset)."""
        paths = self._paths(files, split, arg)
        if paths is None:
            raise DataError(
                f"image_root needs local .csv/.parquet files, not the hub dataset "
                f"'{self.dataset_name}'; download it (hf download {self.dataset_name} "
                "--repo-type dataset) and pass its folder as dataset_name"
            )
        return paths

    def _resolve_labels(self) -> ScoreLabels | None:
        """``score_labels`` with None constants read from the training (else validation) data."""
        if self.score_labels is None:
            return None
        paths = self._paths(self.train_files, self.train_split, "train_files")
        if paths is None and self.train_files is None:
            paths = self._paths(self.val_files, self.val_split, "val_files")
        return self.score_labels.resolve(paths or [])

    def prepare_data(self) -> None:
        """Converts non-streaming data to Arrow once (rank 0) and checks paths and schemas."""
        if self.image_root is not None:
            for files, split, arg in (
                (self.train_files, self.train_split, "train_files"),
                (self.val_files, self.val_split, "val_files"),
            ):
                if files is not None or self.dataset_name is not None:
                    check_no_images_columns(self._no_images_paths(files, split, arg))
        elif not self.streaming:
            self._load(self.train_files, self.train_split, "train_files")
            self._load(self.val_files, self.val_split, "val_files")

    def setup(self, stage: str | None = None) -> None:
        """Builds the training (``fit``) and validation (``fit``/``validate``) datasets."""
        if stage in (None, "fit") and self.train_set is None:
            source = self._load(self.train_files, self.train_split, "train_files")
            if source is None:
                raise DataError(
                    "no training data: pass --data.init_args.train_files=<parquet files, globs or "
                    "folders> or --data.init_args.dataset_name=<hub name or folder>"
                )
            self.train_set = self._make_set(source, train=True)
            self._count("train", self.train_set)
        if stage in (None, "fit", "validate") and self.val_set is None:
            source = self._load(self.val_files, self.val_split, "val_files")
            self.val_set = None if source is None else self._make_set(source, train=False)
            self._count("validation", self.val_set)

    def _count(self, split: str, dataset: PairData | None) -> None:
        """Records and logs the ties dropped and (``image_root``) the rows missing an image."""
        if dataset is None or isinstance(dataset, PickAPicStream):
            return  # a stream drops ties as it reads them
        self.ties_dropped[split] = dataset.num_ties
        if dataset.num_ties:
            logger.info("dropped %d tied %s pairs (label 0.5/0.5)", dataset.num_ties, split)
        if isinstance(dataset, FolderPairs):
            files = self.train_files if split == "train" else self.val_files
            where = str(files or self.dataset_name)
            counts = check_image_files({split: dataset.records}, where, IMAGE_ROOT_HINT)
            self.rows_missing_files[split] = counts[split]

    def _make_set(self, source: Any, train: bool) -> PairData:
        """Wraps a ``datasets`` split (or no_images records) with the train or val preprocessing."""
        if self.score_labels is not None and self._labels is None:  # after the column checks
            self._labels = self._resolve_labels()
        transform = ImageTransform(
            self.resolution, random_crop=train and self.random_crop, hflip=train and self.hflip
        )
        empty = self.proportion_empty_prompts if train else 0.0
        build = PairBuilder(transform, empty, score_labels=self._labels)
        max_pairs = None if train else self.max_val_pairs
        drop_ties = self.drop_ties or self._labels is not None  # SmPO drops human ties
        if isinstance(source, list):  # no_images records
            return FolderPairs(source, build, self.seed, drop_ties, max_pairs)
        if not self.streaming:
            return PickAPicPairs(source, build, self.seed, drop_ties, max_pairs)
        if train:
            return PickAPicStream(source, build, self.seed, drop_ties=drop_ties)
        # Validation is not sharded and keeps file order; max_pairs caps each worker's stream.
        return PickAPicStream(
            source,
            build,
            self.seed,
            False,
            drop_ties=drop_ties,
            max_pairs=max_pairs,
            rank=0,
            world_size=1,
        )

    def collate_fn(self) -> PairCollate:
        """Stacks decoded pairs into an ``ImagePairBatch``, dropping and counting bad rows."""
        return PairCollate(self.resolution)

    def empty_train_message(self) -> str:
        """The error for training data that has no pairs left."""
        return "the training data has no pairs left after dropping ties"
