"""MiniPick's cached assets: the pretrained base model and the Pick-a-Pic-format pairs.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_pref.errors import ConfigError

__all__ = ["ASSET_VERSION", "BASE_FIELDS", "AssetSettings", "MiniPickAssets", "default_data_dir"]

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
_PAIR_FIELDS = (*BASE_FIELDS, "pair_seed", "num_train_pairs", "num_val_pairs")
_PAIR_FIELDS += ("sample_steps", "guidance_scale", "tie_rate", "max_unique_pairs")


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


def _score_pairs(pairs: Path, proxy: Path, out: Path) -> dict:
    """Scores every MiniPick pair with the proxy reward on the CPU (small images and model)."""
    import torch

    from lightning_pref.data.scored import score_pairs
    from lightning_pref.minipick.proxy import MiniPickScore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in train_proxy: tiny convs gain nothing from more threads
    try:
        stats = score_pairs(str(pairs), str(out), MiniPickScore.from_pretrained(proxy), 256, "cpu")
    finally:
        torch.set_num_threads(threads)
    return {k: v for k, v in stats.items() if k != "files"}


class MiniPickAssets:
    """Paths to (and builders of) the MiniPick assets in one data directory.

    Args:
        data_dir: cache folder; None = :func:`default_data_dir`.
        settings: build settings; the defaults are the benchmark's.
    """

    def __init__(self, data_dir: str | Path | None = None, settings: AssetSettings | None = None):
        self.root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.settings = settings or AssetSettings()

    @property
    def image_size(self) -> int:
        """Image side in pixels."""
        return self.settings.image_size

    def base_dir(self, build: bool = True) -> Path:
        """The pretrained base model, a diffusers SD-layout folder without a VAE."""
        folder = self.root / f"base-{self.settings.key(*BASE_FIELDS)}"
        if not build:
            return folder
        if self.settings.base_source == "committed":
            from lightning_pref.minipick.base_weights import install_committed_base

            build = install_committed_base
        elif self.settings.base_source == "train":
            from lightning_pref.minipick.build import pretrain_base

            build = pretrain_base
        else:
            raise ConfigError(
                f"AssetSettings.base_source must be 'committed' or 'train', not "
                f"{self.settings.base_source!r}"
            )
        return ensure_asset(folder, lambda tmp: build(tmp, self.settings), "base model")

    def pairs_dir(self, build: bool = True) -> Path:
        """Pick-a-Pic v2 parquet shards sampled from the base model and labelled by the rater."""
        folder = self.root / f"pairs-{self.settings.key(*_PAIR_FIELDS)}"
        if not build:
            return folder
        from lightning_pref.minipick.build import build_pairs

        base = self.base_dir(build=True)
        return ensure_asset(folder, lambda tmp: build_pairs(base, tmp, self.settings), "pairs")

    def proxy_dir(self, build: bool = True) -> Path:
        """MiniPickScore, the proxy reward trained on the pairs (``config.json`` + safetensors)."""
        folder = self.root / f"proxy-{self.settings.key(*_PAIR_FIELDS)}"
        if not build:
            return folder
        from lightning_pref.minipick.proxy import train_proxy

        pairs = self.pairs_dir(build=True)
        return ensure_asset(
            folder, lambda tmp: train_proxy(pairs, tmp, self.settings), "proxy reward"
        )

    def scored_pairs_dir(self, build: bool = True) -> Path:
        """The pairs with ``score_0``/``score_1`` from the proxy reward, for SmPO's ScoreLabels.

        Same shards and rows as :meth:`pairs_dir` plus the score columns and ``scores.json``
        (:func:`~lightning_pref.data.scored.score_pairs` with :class:`MiniPickScore`). The key is
        the pairs' key (the proxy is trained on, and keyed by, the same settings).
        """
        folder = self.root / f"scored-{self.settings.key(*_PAIR_FIELDS)}"
        if not build:
            return folder
        pairs, proxy = self.pairs_dir(build=True), self.proxy_dir(build=True)
        return ensure_asset(folder, lambda tmp: _score_pairs(pairs, proxy, tmp), "scored pairs")

    def spm_dir(self, build: bool = True) -> Path:
        """The step-aware MiniPickScore (SPO's SPM), trained from the proxy on the pairs' x̂0."""
        folder = self.root / f"spm-{self.settings.key(*_PAIR_FIELDS)}"
        if not build:
            return folder
        from lightning_pref.minipick.spm_train import train_spm

        base, pairs = self.base_dir(build=True), self.pairs_dir(build=True)
        proxy = self.proxy_dir(build=True)
        return ensure_asset(
            folder,
            lambda tmp: train_spm(base, pairs, proxy, tmp, self.settings),
            "step-aware preference model",
        )

    def describe(self) -> dict[str, object]:
        """Settings and folder names, for logs and reports."""
        return {
            "root": str(self.root),
            "settings": asdict(self.settings),
            "base": self.base_dir(build=False).name,
            "pairs": self.pairs_dir(build=False).name,
        }
