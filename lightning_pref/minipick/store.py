"""MiniPick's asset store: the build settings, their folder keys, and sealed asset folders.

Each asset is built on first use into ``<name>.partial-<pid>/``, finished with a ``COMPLETE.json``
manifest (build settings plus size and SHA-256 of every file) and then renamed into place, under a
file lock so that only one process builds. A folder whose manifest is missing or does not match its
files (an interrupted build, a truncated copy) is reported, deleted and rebuilt, never used.
Changing a build setting or ``ASSET_VERSION`` changes the folder name, so stale assets are not
reused either.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ASSET_VERSION",
    "BASE_FIELDS",
    "FLOW_BASE_FIELDS",
    "FLOW_PAIR_FIELDS",
    "MANIFEST",
    "PAIR_FIELDS",
    "AssetSettings",
    "default_data_dir",
    "ensure_asset",
    "is_complete",
]

log = logging.getLogger("lightning_pref.minipick")
ASSET_VERSION = 4
MANIFEST = "COMPLETE.json"


def default_data_dir() -> Path:
    """``$LIGHTNING_PREF_HOME/minipick``, else ``~/.cache/lightning_pref/minipick``."""
    home = os.environ.get("LIGHTNING_PREF_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "lightning_pref"
    return root / "minipick"


@dataclass(frozen=True)
class AssetSettings:
    """Everything that determines the assets' content (hashed into the folder names)."""

    image_size: int = 16
    unet_channels: tuple[int, ...] = (32, 64, 64)
    # "committed": install the committed weights (trained with exactly these base settings by
    # `python -m lightning_pref minipick-base`); "train": pretrain with these settings.
    base_source: str = "committed"
    base_steps: int = 1000
    # MiniPick-Flow's base (lightning_pref.minipick.flow): the same pretraining with its own length,
    # chosen for headroom as the DDPM base's was (docs/flow.md); keyed into the flow assets only
    flow_base_steps: int = 500
    base_batch_size: int = 64
    base_lr: float = 1e-3
    base_seed: int = 0
    pair_seed: int = 0
    num_train_pairs: int = 1024
    num_val_pairs: int = 128
    sample_steps: int = 10
    guidance_scale: float = 5.0
    tie_rate: float = 0.12
    max_unique_pairs: int | None = None  # cap on the *_unique splits (None: one pair per prompt)

    def key(self, *fields: str) -> str:
        """Short hash of the named fields plus the asset version."""
        values = {f: getattr(self, f) for f in fields} | {"version": ASSET_VERSION}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


BASE_FIELDS = (
    "image_size",
    "unet_channels",
    "base_source",
    "base_steps",
    "base_batch_size",
    "base_lr",
    "base_seed",
)
PAIR_FIELDS = (*BASE_FIELDS, "pair_seed", "num_train_pairs", "num_val_pairs")
PAIR_FIELDS += ("sample_steps", "guidance_scale", "tie_rate", "max_unique_pairs")
FLOW_BASE_FIELDS = (
    *(f for f in BASE_FIELDS if f not in ("base_source", "base_steps")),
    "flow_base_steps",
)
FLOW_PAIR_FIELDS = (*FLOW_BASE_FIELDS, *PAIR_FIELDS[len(BASE_FIELDS) :])


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_table(folder: Path) -> dict[str, dict[str, object]]:
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _file_digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def is_complete(folder: Path) -> bool:
    """True if ``folder`` has a manifest and every listed file has its recorded size and hash."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return files == _file_table(folder)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_asset(folder: Path, build: Callable[[Path], dict], what: str) -> Path:
    """Return ``folder`` once complete, building it with ``build(tmp_dir) -> info`` if needed."""
    if is_complete(folder):
        return folder
    with _locked(folder.parent / f".{folder.name}.lock"):
        if is_complete(folder):  # another process finished it while we waited
            return folder
        if folder.exists():
            log.warning("MiniPick %s at %s is incomplete or corrupt; rebuilding it", what, folder)
            shutil.rmtree(folder)
        tmp = folder.parent / f"{folder.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.warning("Building MiniPick %s in %s (first use; cached afterwards)", what, folder)
        info = build(tmp)
        manifest = {"asset": what, "version": ASSET_VERSION, "info": info}
        manifest["files"] = _file_table(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        tmp.rename(folder)
    return folder
