"""Pick-a-Pic parquet sources: find the shards, check their columns, open a hub dataset.

The file-level helpers shared by :class:`~lightning_pref.data.PickAPicDataModule`, the prompt
lists (:func:`~lightning_pref.data.load_prompts`) and the offline scoring step
(:func:`~lightning_pref.data.score_pairs`). This module knows the columns a shard must hold
(``REQUIRED_COLUMNS``, and ``SCORE_COLUMNS`` for SmPO's score labels) and imports no other data
module, so every one of them can use it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

from lightning_pref.errors import DataError

__all__ = [
    "REQUIRED_COLUMNS",
    "SCORE_COLUMNS",
    "check_parquet_columns",
    "check_score_columns",
    "load_hub",
    "local_split_files",
    "resolve_data_files",
]

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
SCORE_COLUMNS = ("score_0", "score_1")
_GLOB_CHARS = ("*", "?", "[")
_FILES_HINT = "pass parquet files, globs or folders with --data.init_args.{arg}"
_SCORE_HINT = (
    "score the pairs first: python -m lightning_pref score-pairs --input DIR --output SCORED_DIR "
    "--scorer lightning_pref.scoring.PretrainedPickScore --scorer.logit_scale false, "
    "then read SCORED_DIR"
)


def resolve_data_files(spec: str | list[str], arg: str = "train_files") -> list[str]:
    """Expands parquet paths, globs and folders (``folder/**/*.parquet``) into a file list.

    Args:
        spec: One path/glob/folder or a list of them.
        arg: The argument name, used in error messages.

    Returns:
        The matched files, sorted within each entry, in the order the entries were given.

    Raises:
        DataError: If a path does not exist or a glob or folder matches no parquet file.
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    hint = _FILES_HINT.format(arg=arg)
    for entry in entries:
        path = os.path.expanduser(str(entry))
        if any(c in path for c in _GLOB_CHARS):
            matched = sorted(glob.glob(path, recursive=True))
            if not matched:
                raise DataError(f"{arg}: the glob '{path}' matches no file; {hint}")
        elif os.path.isdir(path):
            matched = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
            if not matched:
                raise DataError(f"{arg}: the folder '{path}' holds no .parquet file; {hint}")
        elif os.path.isfile(path):
            matched = [path]
        else:
            raise DataError(f"{arg}: the data path '{path}' does not exist; {hint}")
        files.extend(matched)
    return files


def check_score_columns(names: Sequence[str], where: str) -> None:
    """Raises a one-line ``DataError`` naming the fix if ``score_0``/``score_1`` are missing.

    Args:
        names: Column names of a shard or dataset.
        where: The shard or dataset, for the message.
    """
    missing = [c for c in SCORE_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{where} has no column(s) {', '.join(missing)}; {_SCORE_HINT}")


def check_parquet_columns(files: list[str], scored: bool = False) -> None:
    """Raises ``DataError`` naming the first file that lacks a required (or score) column.

    Args:
        files: The parquet shards, checked in order (only their schemas are read).
        scored: Also require ``SCORE_COLUMNS`` (SmPO's score labels).
    """
    import pyarrow.parquet as pq

    for file in files:
        try:
            names = set(pq.read_schema(file).names)
        except Exception as err:  # pyarrow raises several types for a non-parquet file
            raise DataError(f"'{file}' is not a readable parquet file ({err})") from err
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise DataError(
                f"'{file}' is missing the column(s) {', '.join(missing)} "
                f"(Pick-a-Pic v2 needs {', '.join(REQUIRED_COLUMNS)})"
            )
        if scored:
            check_score_columns(sorted(names), f"'{file}'")


def local_split_files(folder: str, split: str) -> list[str]:
    """Finds a split's shards in a local folder (``split/*.parquet`` or ``**/split-NNNNN-*``)."""
    patterns = [
        os.path.join(folder, split, "**", "*.parquet"),
        os.path.join(folder, "**", f"{split}-[0-9][0-9][0-9][0-9][0-9]-*.parquet"),
    ]
    for pattern in patterns:
        if matched := sorted(glob.glob(pattern, recursive=True)):
            return matched
    raise DataError(
        f"no parquet shards for split '{split}' in '{folder}' (looked for {split}/*.parquet "
        f"and {split}-NNNNN-of-NNNNN.parquet); check the split name"
    )


def load_hub(name: str, split: str, streaming: bool) -> Any:
    """Loads a ``datasets`` hub dataset, turning network and split errors into ``DataError``."""
    import datasets

    try:
        source = datasets.load_dataset(name, split=split, streaming=streaming)
    except ValueError as err:
        raise DataError(
            f"cannot load split '{split}' of dataset '{name}': {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # offline: ConnectionError, DatasetNotFoundError, OSError, ...
        raise DataError(
            f"cannot load dataset '{name}' ({type(err).__name__}); if you are offline, download "
            f"its parquet shards (hf download {name} --repo-type dataset) and pass "
            "--data.init_args.train_files=<folder or glob> (and val_files)"
        ) from err
    missing = [c for c in REQUIRED_COLUMNS if c not in (source.column_names or [])]
    if missing:
        raise DataError(f"dataset '{name}' is missing the column(s) {', '.join(missing)}")
    return source
