"""Evaluation prompt sets read from local files (``python -m lightning_pref evaluate --prompts``).

A file is read by :func:`lightning_pref.data.prompt_files.read_prompt_file` (``.txt``, ``.json``
lists including HPDv2's and SPO's, Pick-a-Pic ``.parquet`` captions, PartiPrompts ``.tsv``,
DrawBench ``.csv``; ``--category``/``--challenge`` filter the last two). Besides a file:

- ``None``: MiniPick's 56 held-out test prompts.
- a folder: every ``*.parquet`` in it (recursively; a Pick-a-Pic split folder), else every
  ``*.json`` (HPDv2's ``benchmark/`` folder: anime, concept-art, paintings, photo; 4 × 800),
  read in sorted order.

Pick-a-Pic captions are de-duplicated in order of first appearance (``test`` repeats captions
across pairs); only they are: the other sets are used as published. Whitespace
around each prompt is stripped and empty prompts are dropped.
"""

from __future__ import annotations

from pathlib import Path

from lightning_pref.data.prompt_files import PROMPT_FORMATS, PROMPT_SUFFIXES, read_prompt_file
from lightning_pref.errors import DataError

__all__ = ["read_prompts"]


def _files(path: Path) -> list[Path]:
    """The files of a prompt set: the file itself, or a folder's parquet (else JSON) files."""
    if not path.is_dir():
        return [path]
    files = sorted(path.rglob("*.parquet")) or sorted(path.glob("*.json"))
    if not files:
        raise DataError(f"prompts folder '{path}' holds no .parquet or .json file")
    return files


def read_prompts(
    path: str | Path | None,
    max_prompts: int | None = None,
    category: str | None = None,
    challenge: str | None = None,
) -> list[str]:
    """Read a prompt set (formats in the module docstring).

    Args:
        path: a prompt file or folder; None: MiniPick's held-out test prompts.
        max_prompts: keep the first this many prompts (after de-duplication); None keeps all.
        category: keep PartiPrompts' or DrawBench's rows of this category.
        challenge: keep PartiPrompts' rows of this challenge.

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
    if not suffixes <= set(PROMPT_SUFFIXES):
        raise DataError(f"prompts file '{path}' has an unknown format; use {PROMPT_FORMATS}")
    prompts = [p for f in files for p in read_prompt_file(f, category, challenge)]
    if ".parquet" in suffixes:
        prompts = list(dict.fromkeys(prompts))  # Pick-a-Pic repeats a caption across pairs
    if not prompts:
        raise DataError(f"prompts file '{path}' holds no prompt")
    return prompts[:max_prompts]
