"""Pick-a-Pic without image bytes: the ``*_no_images`` column layout plus a local image folder.

``yuvalkirstain/pickapic_v2_no_images`` (and files exported in its layout, e.g. the PickScore-style
CSVs of other human-preference sets) hold the Pick-a-Pic columns without ``jpg_0``/``jpg_1``: the
images are named by ``image_0_url``/``image_1_url``, URLs or absolute paths on the machine that
wrote the file. :class:`~lightning_pref.data.PickAPicDataModule` reads such files (``.csv`` or
``.parquet``) when it is given ``image_root``, the local folder that holds the images.

Required columns: ``caption``, ``image_0_url``, ``image_1_url``, ``label_0`` (1.0: image 0 is
preferred, 0.0: image 1 is, 0.5 with ``label_1`` 0.5: a tie); every other column is ignored.

How a stored path or URL becomes a local file (:func:`resolve_image_path`): take the URL's path
(for a URL) or the path itself, split it into its components (``..``, ``.`` and empty ones are
dropped), and join ``image_root`` (``R``) with the last k components, for k from all of them down
to 1 (the basename); the first that is an existing file wins. So ``/mnt/c/run7/img/00001.jpg`` is
looked up as ``R/mnt/c/run7/img/00001.jpg``, ``R/c/run7/img/00001.jpg``, ``R/run7/img/00001.jpg``,
``R/img/00001.jpg`` and finally ``R/00001.jpg``, and ``https://host/images/<uid>.png`` as
``R/images/<uid>.png`` then ``R/<uid>.png``. ``image_root: /`` keeps absolute paths as they are.
A row whose image maps to no file (or whose cell is blank) is kept, counted at setup and skipped
when loaded, like a Pick-a-Pic row with corrupt image bytes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from lightning_pref.data.folder import PairRecord
from lightning_pref.errors import DataError

__all__ = [
    "NO_IMAGES_COLUMNS",
    "check_no_images_columns",
    "image_path_tail",
    "read_no_images",
    "resolve_image_path",
]

NO_IMAGES_COLUMNS = ("caption", "image_0_url", "image_1_url", "label_0")
FORMATS = (".csv", ".parquet")
IMAGE_ROOT_HINT = (
    "check image_root: a stored path or URL maps to image_root joined with its last k path "
    "components (the whole path down to the basename)"
)


def image_path_tail(stored: str) -> tuple[str, ...]:
    """The path components of a stored image path or URL (a URL's path; no ``..``/``.``).

    Args:
        stored: An ``image_*_url`` cell: ``https://host/a/b.png``, ``/abs/a/b.jpg`` or ``a/b.jpg``.

    Returns:
        The components, e.g. ``("a", "b.png")``; empty for a blank cell.
    """
    text = stored.strip()
    if "://" in text:
        text = unquote(urlsplit(text).path)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    return tuple(p for p in parts if p not in ("/", ".", "..", ""))


def resolve_image_path(stored: str, image_root: Path) -> Path:
    """Maps a stored image path or URL to a local file under ``image_root`` (module docstring).

    Args:
        stored: The ``image_0_url``/``image_1_url`` cell.
        image_root: The local image folder.

    Returns:
        The first existing ``image_root / <last k components>``, for k from all components down
        to 1; when none exists, ``image_root / <basename>`` (``image_root`` for a blank cell),
        which the caller counts as missing.
    """
    parts = image_path_tail(stored)
    for start in range(len(parts)):
        candidate = image_root.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return image_root.joinpath(*parts[-1:])


def _label(value: Any) -> float:
    """``label_0`` as a float; NaN for a blank or non-numeric cell (the row is skipped later)."""
    try:
        label = float(value)
    except (TypeError, ValueError):
        return math.nan
    return label if math.isfinite(label) else math.nan


def _format(path: Path) -> str:
    """``.csv`` or ``.parquet``; anything else is a ``DataError``."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"'{path}': a Pick-a-Pic no_images file must be .csv or .parquet, got '{suffix}'"
        )
    return suffix


def _columns(path: Path) -> list[str]:
    """The column names of a CSV (its header) or a parquet file (its schema)."""
    if _format(path) == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as err:  # pyarrow raises several types for a non-parquet file
            raise DataError(f"'{path}' is not a readable parquet file ({err})") from err
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [name.strip() for name in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"'{path}' is not a readable CSV file ({err})") from err


def check_no_images_columns(files: list[str]) -> None:
    """Raises a one-line ``DataError`` naming the first file and column that are missing.

    Args:
        files: ``.csv`` or ``.parquet`` files in the no_images layout (only headers are read).
    """
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise DataError(f"'{path}': no such file")
        missing = [c for c in NO_IMAGES_COLUMNS if c not in _columns(path)]
        if missing:
            raise DataError(
                f"'{path}' is missing the column '{missing[0]}' (the Pick-a-Pic no_images "
                f"layout needs {', '.join(NO_IMAGES_COLUMNS)})"
            )


def _rows(path: Path) -> list[tuple[dict[str, Any], str]]:
    """The rows of one file with their positions (``'f.csv' line 7``, ``'f.parquet' row 3``)."""
    if _format(path) == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=list(NO_IMAGES_COLUMNS))
        return [(row, f"'{path}' row {i}") for i, row in enumerate(table.to_pylist())]
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        for row in reader:
            rows.append((row, f"'{path}' line {reader.line_num}"))
    return rows


def read_no_images(files: list[str], image_root: str | Path) -> list[PairRecord]:
    """Reads no_images files into pair records whose image paths point into ``image_root``.

    ``path_w`` is image 0 and ``path_l`` image 1, and ``label`` is ``label_0``: as in Pick-a-Pic
    v2, label 1.0 makes image 0 the winner, 0.0 image 1, and 0.5 is a tie. A blank or
    non-numeric label becomes NaN, so the row is skipped (and counted) when it is loaded.

    Args:
        files: ``.csv``/``.parquet`` files, read in order.
        image_root: The local image folder (:func:`resolve_image_path`).

    Returns:
        One record per row, in file order.

    Raises:
        DataError: If a file is missing, unreadable, of another format, or lacks a column.
    """
    check_no_images_columns(files)
    root = Path(image_root).expanduser()
    records = []
    for file in files:
        for row, where in _rows(Path(file)):
            path_0 = resolve_image_path(str(row["image_0_url"] or ""), root)
            path_1 = resolve_image_path(str(row["image_1_url"] or ""), root)
            caption = "" if row["caption"] is None else str(row["caption"])
            records.append(PairRecord(caption, path_0, path_1, _label(row["label_0"]), where))
    return records
