"""MiniPick's cached assets: the pretrained base model and the Pick-a-Pic-format pairs.

:class:`MiniPickAssets` is the one place that knows the build order (base model, pairs, proxy
reward, scored pairs, step-aware model; CaPO's pairs from the base model and the proxy) and calls
the builders, each of which takes its input folders as arguments. How an asset folder is built,
sealed and checked is in :mod:`lightning_pref.minipick.store`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from lightning_pref.data.scored import score_pairs
from lightning_pref.errors import ConfigError
from lightning_pref.minipick.base_weights import install_committed_base
from lightning_pref.minipick.build import build_pairs, pretrain_base
from lightning_pref.minipick.capo_pairs import CAPO_DATA_VERSION, CaPOSettings, build_capo_pairs
from lightning_pref.minipick.noise_pairs import build_flow_noise_pairs
from lightning_pref.minipick.proxy import MiniPickScore
from lightning_pref.minipick.proxy_train import train_proxy
from lightning_pref.minipick.spm_train import train_spm
from lightning_pref.minipick.store import (
    BASE_FIELDS,
    FLOW_BASE_FIELDS,
    FLOW_PAIR_FIELDS,
    PAIR_FIELDS,
    AssetSettings,
    default_data_dir,
    ensure_asset,
    is_complete,
)

__all__ = ["MiniPickAssets"]


def _score_pairs(pairs: Path, proxy: Path, out: Path) -> dict:
    """Scores every MiniPick pair with the proxy reward on the CPU (small images and model)."""
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
            build = install_committed_base
        elif self.settings.base_source == "train":
            build = pretrain_base
        else:
            raise ConfigError(
                f"AssetSettings.base_source must be 'committed' or 'train', not "
                f"{self.settings.base_source!r}"
            )
        return ensure_asset(folder, lambda tmp: build(tmp, self.settings), "base model")

    def pairs_dir(self, build: bool = True) -> Path:
        """Pick-a-Pic v2 parquet shards sampled from the base model and labelled by the rater."""
        folder = self.root / f"pairs-{self.settings.key(*PAIR_FIELDS)}"
        if not build:
            return folder
        base = self.base_dir(build=True)
        return ensure_asset(folder, lambda tmp: build_pairs(base, tmp, self.settings), "pairs")

    def proxy_dir(self, build: bool = True) -> Path:
        """MiniPickScore, the proxy reward trained on the pairs (``config.json`` + safetensors)."""
        folder = self.root / f"proxy-{self.settings.key(*PAIR_FIELDS)}"
        if not build:
            return folder
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
        folder = self.root / f"scored-{self.settings.key(*PAIR_FIELDS)}"
        if not build:
            return folder
        pairs, proxy = self.pairs_dir(build=True), self.proxy_dir(build=True)
        return ensure_asset(folder, lambda tmp: _score_pairs(pairs, proxy, tmp), "scored pairs")

    def spm_dir(self, build: bool = True) -> Path:
        """The step-aware MiniPickScore (SPO's SPM), trained from the proxy on the pairs' x̂0."""
        folder = self.root / f"spm-{self.settings.key(*PAIR_FIELDS)}"
        if not build:
            return folder
        base, pairs = self.base_dir(build=True), self.pairs_dir(build=True)
        proxy = self.proxy_dir(build=True)
        return ensure_asset(
            folder,
            lambda tmp: train_spm(base, pairs, proxy, tmp, self.settings),
            "step-aware preference model",
        )

    def flow_base_dir(self, build: bool = True) -> Path:
        """MiniPick-Flow's base (:mod:`~lightning_pref.minipick.flow`), pretrained on first use.

        The DDPM base's settings and pretraining with the rectified-flow parameterisation, for
        ``flow_base_steps`` steps; no weights are committed for it (``base_source`` does not
        apply), so the first use pretrains it.
        """
        folder = self.root / f"flowbase-{self.settings.key(*FLOW_BASE_FIELDS)}"
        if not build:
            return folder
        return ensure_asset(
            folder, lambda tmp: pretrain_base(tmp, self.settings, flow=True), "MiniPick-Flow base"
        )

    def flow_pairs_dir(self, build: bool = True) -> Path:
        """MiniPick-Flow's pairs: as :meth:`pairs_dir`, sampled from the flow base (Euler ODE)."""
        folder = self.root / f"flowpairs-{self.settings.key(*FLOW_PAIR_FIELDS)}"
        if not build:
            return folder
        base = self.flow_base_dir(build=True)
        return ensure_asset(
            folder,
            lambda tmp: build_pairs(base, tmp, self.settings, flow=True),
            "MiniPick-Flow pairs",
        )

    def flow_scored_pairs_dir(self, build: bool = True) -> Path:
        """MiniPick-Flow's pairs scored by the proxy (trained on the DDPM pairs), for SmPO."""
        folder = self.root / f"flowscored-{self.settings.key(*FLOW_PAIR_FIELDS)}"
        if not build:
            return folder
        pairs, proxy = self.flow_pairs_dir(build=True), self.proxy_dir(build=True)
        return ensure_asset(
            folder, lambda tmp: _score_pairs(pairs, proxy, tmp), "MiniPick-Flow scored pairs"
        )

    def flow_noise_pairs_dir(self, build: bool = True) -> Path:
        """MiniPick-Flow's noise-tracked pairs for PNAPO (see ``minipick.noise_pairs``)."""
        folder = self.root / f"flownoise-{self.settings.key(*FLOW_PAIR_FIELDS)}"
        if not build:
            return folder
        base, proxy = self.flow_base_dir(build=True), self.proxy_dir(build=True)
        return ensure_asset(
            folder,
            lambda tmp: build_flow_noise_pairs(base, proxy, tmp, self.settings),
            "MiniPick-Flow noise-tracked pairs",
        )

    def capo_dir(self, settings: CaPOSettings, build: bool = True) -> Path:
        """CaPO's calibrated pairs (:mod:`~lightning_pref.minipick.capo_pairs`) with ``settings``.

        Keyed by the base model's and the proxy's folder names, ``settings`` and the CaPO data
        version; built by :meth:`write_capo`.
        """
        values = {
            "base": self.base_dir(build=False).name,
            "proxy": self.proxy_dir(build=False).name,
            "settings": asdict(settings),
            "version": CAPO_DATA_VERSION,
        }
        key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
        folder = self.root / f"capo-{key}"
        if not build:
            return folder
        return ensure_asset(folder, lambda tmp: self.write_capo(tmp, settings), "CaPO pairs")

    def write_capo(self, out_dir: Path, settings: CaPOSettings) -> dict:
        """Write CaPO's pairs to ``out_dir`` from the cached base model and proxy (built if needed).

        A complete proxy is used as it is, without building (or checking) the pairs it came from.
        """
        base = self.base_dir(build=True)
        proxy = self.proxy_dir(build=False)
        if not is_complete(proxy):
            proxy = self.proxy_dir(build=True)
        return build_capo_pairs(base, proxy, out_dir, settings)

    def describe(self) -> dict[str, object]:
        """Settings and folder names, for logs and reports."""
        return {
            "root": str(self.root),
            "settings": asdict(self.settings),
            "base": self.base_dir(build=False).name,
            "pairs": self.pairs_dir(build=False).name,
        }
