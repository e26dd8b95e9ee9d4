"""Prompt files, one reader for evaluation and for the on-policy prompt source.

The format is chosen by the suffix; nothing is downloaded:

- ``.txt``: one prompt per line.
- ``.json``: a list of strings; a list of objects with a ``caption``, ``prompt`` or ``text`` key
  (HPDv2's ``test.json``; SPO's ``spo_4k_training_prompts.json``, 4000 captions); or an object of
  lists (HPDv2's benchmark styles in one file), read in order.
- ``.parquet``: the ``caption`` column of a Pick-a-Pic shard (only that column is read).
- ``.tsv``: PartiPrompts (``Prompt``, ``Category``, ``Challenge``, ``Note``; 1632 rows), split on
  tabs only (its prompts hold quotes).
- ``.csv``: DrawBench (``Prompts``, ``Category``; 200 rows; fields with commas are quoted, and one
  category is published with a trailing space, matched here without it).

``category`` and ``challenge`` keep the rows whose column equals them (whitespace stripped); they
need a file with that column. Whitespace around each prompt is stripped and empty prompts dropped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lightning_pref.errors import DataError

__all__ = ["PROMPT_FORMATS", "PROMPT_SUFFIXES", "read_prompt_file"]

PROMPT_FORMATS = (
    ".txt (one per line), .json (lists, HPDv2, SPO), .parquet (Pick-a-Pic), .tsv (PartiPrompts), "
    ".csv (DrawBench)"
)
PROMPT_SUFFIXES = (".txt", ".json", ".parquet", ".tsv", ".csv")
_JSON_KEYS = ("caption", "prompt", "text")


def _json_layout(path: Path) -> str:
    return (
        f"prompts file '{path}' must hold a JSON list of strings, of objects with a 'caption', "
        "'prompt' or 'text' key (HPDv2 test.json, SPO), or a mapping of styles to such lists"
    )


def _json(path: Path) -> list[str]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"prompts file '{path}' is not valid JSON: {err}") from err
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        data = [p for style in data.values() for p in style]  # {"anime": [...], ...}
    if not isinstance(data, list):
        raise DataError(_json_layout(path))
    out = []
    for item in data:
        if isinstance(item, dict):
            key = next((k for k in _JSON_KEYS if isinstance(item.get(k), str)), None)
            if key is None:
                raise DataError(_json_layout(path))
            item = item[key]
        if not isinstance(item, str):
            raise DataError(_json_layout(path))
        out.append(item)
    return out


def _parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        if "caption" not in pq.read_schema(path).names:
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


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of PartiPrompts' TSV (tabs only) or DrawBench's CSV (quoted commas)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".tsv":
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [[_unquote(field) for field in row] for row in reader]
    else:
        rows = list(csv.reader(lines))
    if not rows:
        raise DataError(f"prompts file '{path}' is empty")
    return [h.strip() for h in rows[0]], [r for r in rows[1:] if r]


def _tabular(path: Path, category: str | None, challenge: str | None) -> list[str]:
    header, rows = _table(path)
    column = next((c for c in ("Prompt", "Prompts") if c in header), None)
    if column is None:
        raise DataError(f"'{path}' has no 'Prompt' column (PartiPrompts) or 'Prompts' (DrawBench)")
    keep = {name: value for name, value in (("Category", category), ("Challenge", challenge))
            if value is not None}  # fmt: skip
    for name in keep:
        if name not in header:
            raise DataError(f"'{path}' has no '{name}' column to filter by")
    index = {name: header.index(name) for name in [column, *keep]}

    def wanted(row: list[str]) -> bool:
        return all(row[index[n]].strip() == v.strip() for n, v in keep.items())

    return [row[index[column]] for row in rows if len(row) > max(index.values()) and wanted(row)]


def read_prompt_file(
    path: str | Path, category: str | None = None, challenge: str | None = None
) -> list[str]:
    """The prompts of one file (formats in the module docstring), stripped, empty ones dropped.

    Raises:
        DataError: a missing file, an unknown format, a filter the file has no column for.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prompts file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise DataError(f"prompts file '{path}' has an unknown format; use {PROMPT_FORMATS}")
    if suffix in (".tsv", ".csv"):
        prompts = _tabular(path, category, challenge)
    elif category is not None or challenge is not None:
        raise DataError(f"--category/--challenge filter PartiPrompts (.tsv) or DrawBench (.csv), "
                        f"not '{path.name}'")  # fmt: skip
    elif suffix == ".json":
        prompts = _json(path)
    elif suffix == ".parquet":
        prompts = _parquet(path)
    else:
        prompts = path.read_text(encoding="utf-8").splitlines()
    return [p.strip() for p in prompts if p.strip()]
