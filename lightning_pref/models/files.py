"""Checks on weight and checkpoint files before a library opens them: one line instead of a trace.

A clone made without Git LFS leaves a ~130-byte text pointer where each weights file should be;
a failed download can leave a few bytes; an interrupted save leaves a truncated checkpoint. The
libraries that read these files report them with tracebacks about headers, pickles or zip
archives. These checks name the file and the fix instead.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from lightning_pref.errors import ModelLoadError

__all__ = [
    "LFS_POINTER_PREFIX",
    "WEIGHT_SUFFIXES",
    "check_checkpoint_file",
    "check_weights_file",
    "check_weights_folder",
]

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_POINTER_MAX_BYTES = 1024  # real pointers are ~130 bytes; weights are never this small as text


def _lfs_pointer(path: Path) -> str | None:
    """The pointer's ``size`` line value if ``path`` is a Git LFS pointer file, else None."""
    if path.stat().st_size > _POINTER_MAX_BYTES:
        return None
    text = path.read_bytes()
    if not text.startswith(LFS_POINTER_PREFIX):
        return None
    sizes = [line.split()[1] for line in text.decode(errors="replace").splitlines()
             if line.startswith("size ") and len(line.split()) == 2]  # fmt: skip
    return sizes[0] if sizes else "?"


def check_weights_file(path: str | Path) -> None:
    """Raise :class:`ModelLoadError` (one line) for a Git LFS pointer or a malformed safetensors.

    A safetensors file starts with an 8-byte little-endian header length and that many bytes of
    JSON; anything shorter or unparsable is named with its size.
    """
    path = Path(path)
    if not path.is_file():
        return
    size = _lfs_pointer(path)
    if size is not None:
        raise ModelLoadError(
            f"'{path}' is a Git LFS pointer ({path.stat().st_size} bytes) in place of the "
            f"{size}-byte file: fetch the real file with `git lfs pull` in its repository "
            "(install git-lfs first), or download it again"
        )
    if path.suffix == ".safetensors":
        _check_safetensors_header(path)


def _check_safetensors_header(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
        header = handle.read(length) if 0 < length <= size - 8 else b""
    try:
        json.loads(header)
    except ValueError:
        raise ModelLoadError(
            f"'{path}' is not a safetensors file ({size} bytes, no valid header): the download "
            "or copy is broken; fetch the file again"
        ) from None


def check_weights_folder(folder: str | Path) -> None:
    """:func:`check_weights_file` on every weights file in ``folder`` and its subfolders."""
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            check_weights_file(path)


def check_checkpoint_file(path: str | Path) -> None:
    """Raise :class:`ModelLoadError` (one line) for a checkpoint torch cannot open.

    A Lightning checkpoint file is a zip archive (torch's format); a truncated or random file has
    no readable central directory. Folders (FSDP and DeepSpeed shards) are left to the strategy.
    """
    path = Path(path)
    if path.is_dir() or not path.exists():
        return
    check_weights_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelLoadError(
            f"checkpoint '{path}' ({path.stat().st_size} bytes) is truncated or not a checkpoint "
            f"({err}); pass another checkpoint, or --ckpt_path last to resume from the newest "
            "readable one"
        ) from None
