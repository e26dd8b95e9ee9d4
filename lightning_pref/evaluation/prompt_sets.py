"""Evaluation prompt sets read from local files (``python -m lightning_pref evaluate --prompts``).

The format is chosen by the file's suffix; nothing is downloaded:

- ``.txt``: one prompt per line; blank lines are skipped.
- ``.json``: a JSON list of strings (one HPDv2 benchmark style file, e.g. ``benchmark/anime.json``),
  a list of objects with a ``"prompt"`` key (HPDv2's ``test.json``), or an object mapping a style
  to a list of strings (the four benchmark styles in one file).
- ``.parquet``: Pick-a-Pic shards; the ``caption`` column, de-duplicated in order of first
  appearance (``validation_unique`` holds 500 pairs with 500 distinct captions; ``test`` repeats
  captions across pairs). Only that column is read, not the images.
- ``.tsv``: PartiPrompts (``PartiPrompts.tsv``, columns ``Prompt``, ``Category``, ``Challenge``,
  ``Note``); the ``Prompt`` column, 1632 rows.
- a folder: every ``*.parquet`` in it (recursively; a Pick-a-Pic split folder), else every
  ``*.json`` (HPDv2's ``benchmark/`` folder: anime, concept-art, paintings, photo; 4 × 800),
  read in sorted order.

Only Pick-a-Pic captions are de-duplicated: the other sets are used as published. Whitespace
around each prompt is stripped and empty prompts are dropped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lightning_pref.errors import DataError

__all__ = ["PROMPT_FORMATS", "read_prompts"]

PROMPT_FORMATS = ".txt (one per line), .json (HPDv2), .parquet (Pick-a-Pic), .tsv (PartiPrompts)"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _json(path: Path) -> list[str]:
    """Prompts of a JSON list of strings, of ``{"prompt": ...}`` objects, or of styles."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"prompts file '{path}' is not valid JSON: {err}") from err
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        data = [p for style in data.values() for p in style]  # {"anime": [...], ...}
    if isinstance(data, list) and all(isinstance(e, dict) for e in data):
        if not all(isinstance(e.get("prompt"), str) for e in data):
            raise DataError(f"prompts file '{path}': every object needs a string 'prompt' key")
        data = [e["prompt"] for e in data]  # HPDv2 test.json
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise DataError(
            f"prompts file '{path}' must hold a JSON list of strings, of objects with a "
            "'prompt' key (HPDv2 test.json), or a mapping of styles to such lists"
        )
    return data


def _parquet(path: Path) -> list[str]:
    """The ``caption`` column of a Pick-a-Pic shard."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if "caption" not in names:
            raise DataError(f"'{path}' has no 'caption' column (a Pick-a-Pic shard has one)")
        return [str(c) for c in pq.read_table(path, columns=["caption"]).column(0).to_pylist()]
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"'{path}' is not a readable parquet file ({err})") from err


def _unquote(field: str) -> str:
    """A CSV-quoted field (``"a ""b"" c"``) without its quotes; other fields as they are."""
    if len(field) > 1 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def _tsv(path: Path) -> list[str]:
    """The ``Prompt`` column of PartiPrompts.tsv (split on tabs only: prompts contain quotes)."""
    rows = list(csv.reader(_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "Prompt" not in rows[0]:
        raise DataError(f"'{path}' has no 'Prompt' column in its header (PartiPrompts.tsv has)")
    column = rows[0].index("Prompt")
    return [_unquote(row[column]) for row in rows[1:] if len(row) > column]


_READERS = {".txt": _lines, ".json": _json, ".parquet": _parquet, ".tsv": _tsv}


def _files(path: Path) -> list[Path]:
    """The files of a prompt set: the file itself, or a folder's parquet (else JSON) files."""
    if not path.is_dir():
        return [path]
    files = sorted(path.rglob("*.parquet")) or sorted(path.glob("*.json"))
    if not files:
        raise DataError(f"prompts folder '{path}' holds no .parquet or .json file")
    return files


def read_prompts(path: str | Path | None, max_prompts: int | None = None) -> list[str]:
    """Read a prompt set (formats in the module docstring).

    Args:
        path: a prompt file or folder; None: MiniPick's held-out test prompts.
        max_prompts: keep the first this many prompts (after de-duplication); None keeps all.

    Returns:
        The prompts, in file order.

    Raises:
        DataError: if the path is missing, its format is unknown, or it holds no prompt.
    """
    if max_prompts is not None and max_prompts < 1:
        raise DataError(f"max_prompts must be at least 1, got {max_prompts}")
    if path is None:
        from lightning_pref.minipick import prompts as minipick_prompts

        return minipick_prompts("test")[:max_prompts]
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"prompts file '{path}' does not exist")
    files = _files(path)
    suffixes = {f.suffix.lower() for f in files}
    if not suffixes <= set(_READERS):
        raise DataError(f"prompts file '{path}' has an unknown format; use {PROMPT_FORMATS}")
    entries = [p for f in files for p in _READERS[f.suffix.lower()](f)]
    prompts = [p.strip() for p in entries if p.strip()]
    if ".parquet" in suffixes:
        prompts = list(dict.fromkeys(prompts))  # Pick-a-Pic repeats a caption across pairs
    if not prompts:
        raise DataError(f"prompts file '{path}' holds no prompt")
    return prompts[:max_prompts]
