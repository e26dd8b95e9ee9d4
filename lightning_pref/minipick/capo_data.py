"""CaPO's offline data on MiniPick: base-model samples, two disagreeing rewards, Pareto pairs.

CaPO (METHODS §11.4) samples N images per prompt from the *pretrained* model, scores them with L
reward models, calibrates each score against the prompt's other samples and pairs the upper
Pareto front with the lower one (:mod:`lightning_pref.data.calibrated`). Here:

- prompts: MiniPick's training prompts (pairs, ``split=train``) and validation prompts
  (``split=validation``); N = 8 samples each (the paper: 16; 8 keeps the build under 2 minutes
  on 2 CPU cores) with the sampler MiniPick's pairs use (DDIM 10 steps, CFG 5);
- rewards (L = 2): the proxy :class:`~lightning_pref.minipick.proxy.MiniPickScore` (image against
  caption, PickScore's role) and :class:`~lightning_pref.minipick.aesthetic.MiniPickAesthetic`
  (the image alone). The hidden gold rater is never used. On base samples the two order a
  prompt's samples oppositely about half the time (:func:`order_disagreement`), so the Pareto
  fronts hold several samples and multi-reward selection matters;
- pairs: every (upper front, lower front) pair with a positive mean calibrated gap, then at most
  ``pairs_per_prompt`` of them drawn with a seed; the label is ``(1 + Δ) / 2``, which
  :class:`~lightning_pref.objectives.CaPO` decodes.

:class:`MiniPickCaPODataModule` builds the folder on first use in the MiniPick cache (keyed by the
base model, the proxy and these settings, sealed like the other assets) and reads it with
:class:`~lightning_pref.data.PairFolderDataModule`. ``python -m lightning_pref.minipick.capo_data
--out DIR`` writes the same folder anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from lightning_pref.data.calibrated import CalibratedPair, calibrated_pairs, write_pair_csv
from lightning_pref.data.folder import PairFolderDataModule
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import sample_images
from lightning_pref.scoring.base import Scorer

__all__ = [
    "CaPOSettings",
    "MiniPickCaPODataModule",
    "build_capo_folder",
    "capo_cache_dir",
    "order_disagreement",
    "pair_conflicts",
    "sample_candidates",
    "score_candidates",
]

CAPO_DATA_VERSION = 1
SAMPLE_BATCH = 128  # images per sampling call (256 UNet rows with CFG)


@dataclass(frozen=True)
class CaPOSettings:
    """What determines a CaPO folder's content (hashed into its cache name)."""

    samples_per_prompt: int = 8  # N (the paper: 16)
    pairs_per_prompt: int | None = 4  # kept per prompt; None: every front pair
    seed: int = 0  # sampling seed (split k uses seed + k) and pair draws
    sample_steps: int = 10  # DDIM steps, as MiniPick's pairs
    guidance_scale: float = 5.0  # CFG, as MiniPick's pairs
    temperature: float = 1.0  # calibration temperature (the paper's formula: 1)
    multi_reward: bool = True  # proxy + aesthetic; False: the proxy alone (max vs min)
    aesthetic_scale: float = 10.0  # MiniPickAesthetic's logit scale
    max_prompts: int | None = None  # first this many prompts per split (tests); None: all


def sample_candidates(
    policy: DiffusionPolicy,
    captions: Sequence[str],
    samples_per_prompt: int,
    seed: int,
    num_steps: int = 10,
    guidance_scale: float = 5.0,
) -> Tensor:
    """``[P, N, 3, H, W]`` base-model samples, N per caption, each batch seeded by its start."""
    per_batch = max(1, SAMPLE_BATCH // samples_per_prompt)  # prompts per sampling call
    chunks = []
    for start in range(0, len(captions), per_batch):
        chunk = [c for c in captions[start : start + per_batch] for _ in range(samples_per_prompt)]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            images = sample_images(policy, chunk, gen, num_steps, guidance_scale)  # [b·N, 3, H, W]
        chunks.append(images.view(-1, samples_per_prompt, *images.shape[1:]))
    return torch.cat(chunks)


def score_candidates(images: Tensor, captions: Sequence[str], scorers: Sequence[Scorer]) -> Tensor:
    """``[P, N, L]`` raw rewards of ``[P, N, 3, H, W]`` samples under L scorers."""
    p, n = images.shape[:2]
    flat = images.flatten(0, 1)  # [P·N, 3, H, W]
    repeated = [c for c in captions for _ in range(n)]
    with torch.no_grad():
        columns = [scorer(flat, repeated).float().view(p, n) for scorer in scorers]
    return torch.stack(columns, dim=-1)


def order_disagreement(scores: Tensor) -> float:
    """How often rewards 0 and 1 order two samples of a prompt oppositely (strictly).

    Args:
        scores: ``[P, N, L]`` raw rewards, L ≥ 2.

    Returns:
        The fraction of the ``P·N(N-1)/2`` within-prompt sample pairs with
        ``(a_i - a_k)·(b_i - b_k) < 0``.
    """
    a, b = scores[..., 0], scores[..., 1]  # [P, N]
    da, db = a.unsqueeze(-1) - a.unsqueeze(-2), b.unsqueeze(-1) - b.unsqueeze(-2)  # [P, N, N]
    n = scores.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return float(((da * db) < 0)[:, upper].float().mean())


def pair_conflicts(scores: Tensor, pairs: Sequence[CalibratedPair]) -> float:
    """Fraction of selected pairs whose loser beats the winner on at least one reward."""
    if not pairs:
        return 0.0
    conflicts = [
        bool((scores[q.prompt, q.index_l] > scores[q.prompt, q.index_w]).any()) for q in pairs
    ]
    return sum(conflicts) / len(pairs)


def _write_images(folder: Path, split: str, images: Tensor) -> list[list[str]]:
    """PNG files ``images/<split>/pPPP_sNN.png``; per prompt, their paths relative to ``folder``."""
    from lightning_pref.minipick.build import png_bytes

    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    paths: list[list[str]] = []
    for p, row in enumerate(images):
        names = [f"images/{split}/p{p:03d}_s{k:02d}.png" for k in range(row.shape[0])]
        for name, image in zip(names, row, strict=True):
            (folder / name).write_bytes(png_bytes(image))
        paths.append(names)
    return paths


def _build_split(
    folder: Path,
    split: str,
    offset: int,
    captions: list[str],
    policy: DiffusionPolicy,
    scorers: Sequence[Scorer],
    settings: CaPOSettings,
) -> tuple[list[list[str]], list[CalibratedPair], dict]:
    """Sample, score, select and write one split's images; return paths, pairs and stats."""
    images = sample_candidates(
        policy, captions, settings.samples_per_prompt, settings.seed + offset,
        settings.sample_steps, settings.guidance_scale,
    )  # fmt: skip
    scores = score_candidates(images, captions, scorers)  # [P, N, L]
    pairs = calibrated_pairs(
        scores, settings.pairs_per_prompt, settings.seed + offset, settings.temperature
    )
    paths = _write_images(folder, split, images)
    gaps = torch.tensor([q.gap for q in pairs] or [0.0])
    stats = {
        "prompts": len(captions),
        "pairs": len(pairs),
        "mean_gap": round(float(gaps.mean()), 4),
        "pair_conflicts": round(pair_conflicts(scores, pairs), 4),
        "scores": scores.tolist(),
    }
    if scores.shape[-1] >= 2:
        stats["order_disagreement"] = round(order_disagreement(scores), 4)
    return paths, pairs, stats


def build_capo_folder(
    folder: str | Path,
    policy: DiffusionPolicy,
    scorers: Sequence[Scorer],
    splits: dict[str, list[str]],
    settings: CaPOSettings | None = None,
) -> dict:
    """Write a CaPO pair folder: ``images/``, ``pairs.csv`` and ``capo.json`` (settings, stats).

    Args:
        folder: where to write (created).
        policy: the pretrained model to sample (built, in eval mode).
        scorers: the L reward models, in the order of the score columns.
        splits: ``{"train": captions, "validation": captions}`` (validation may be absent).
        settings: sampling and selection settings.

    Returns:
        Per split: prompts, pairs, mean calibrated gap, the share of pairs where some reward
        prefers the loser and (L ≥ 2) the order disagreement of rewards 0 and 1; plus seconds.
    """
    settings = settings or CaPOSettings()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start, info, rows = time.perf_counter(), {}, []
    for offset, (split, captions) in enumerate(splits.items()):
        captions = captions[: settings.max_prompts]
        paths, pairs, stats = _build_split(
            folder, split, offset, captions, policy, scorers, settings
        )
        part = write_pair_csv(folder / f".pairs_{split}.csv", captions, paths, pairs, split)
        lines = part.read_text(encoding="utf-8").splitlines(keepends=True)
        rows += lines if not rows else lines[1:]  # one header
        part.unlink()
        (folder / f"scores_{split}.json").write_text(
            json.dumps({"captions": captions, "scores": stats.pop("scores")})
        )
        info[split] = stats
    (folder / "pairs.csv").write_text("".join(rows), encoding="utf-8")
    info["seconds"] = round(time.perf_counter() - start, 1)
    info["settings"] = asdict(settings)
    (folder / "capo.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    return info


def _default_scorers(proxy_dir: Path, settings: CaPOSettings) -> list[Scorer]:
    from lightning_pref.minipick.aesthetic import MiniPickAesthetic
    from lightning_pref.minipick.proxy import MiniPickScore

    proxy: list[Scorer] = [MiniPickScore.from_pretrained(proxy_dir)]
    if not settings.multi_reward:
        return proxy
    return [*proxy, MiniPickAesthetic(scale=settings.aesthetic_scale).eval()]


def _build_from_assets(folder: Path, data_dir: str | None, settings: CaPOSettings) -> dict:
    """Build from the cached MiniPick base model and proxy (both built on first use)."""
    from lightning_pref.minipick.assets import MiniPickAssets
    from lightning_pref.minipick.store import is_complete
    from lightning_pref.minipick.world import prompts

    assets = MiniPickAssets(data_dir)
    policy = DiffusionPolicy(pretrained=str(assets.base_dir(build=True)))
    policy.build()
    policy.eval()
    proxy = assets.proxy_dir(build=False)  # a complete proxy is used without its pairs
    scorers = _default_scorers(proxy if is_complete(proxy) else assets.proxy_dir(), settings)
    splits = {"train": prompts("train"), "validation": prompts("validation")}
    return build_capo_folder(folder, policy, scorers, splits, settings)


def capo_cache_dir(data_dir: str | None, settings: CaPOSettings) -> Path:
    """``<minipick cache>/capo-<key>``: keyed by the base model, the proxy and ``settings``."""
    from lightning_pref.minipick.assets import MiniPickAssets

    assets = MiniPickAssets(data_dir)
    values = {
        "base": assets.base_dir(build=False).name,
        "proxy": assets.proxy_dir(build=False).name,
        "settings": asdict(settings),
        "version": CAPO_DATA_VERSION,
    }
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    return assets.root / f"capo-{key}"


class MiniPickCaPODataModule(PairFolderDataModule):
    """CaPO's calibrated MiniPick pairs, built on first use (see the module docstring).

    Args:
        root: a folder written by ``python -m lightning_pref.minipick.capo_data --out DIR``;
            None: build (once) and use ``capo-<key>`` in the MiniPick cache.
        data_dir: the MiniPick asset cache; None = the default (see ``MiniPickAssets``).
        samples_per_prompt: N, samples per prompt.
        pairs_per_prompt: pairs kept per prompt; None = every front pair.
        multi_reward: proxy + aesthetic (True) or the proxy alone.
        build_seed: seed of the sampling and of the pair draws.
        max_prompts: build from the first this many prompts per split (quick tests).
        batch_size: pairs per batch.
        proportion_empty_prompts: empty-caption dropout.
        num_workers: DataLoader workers.
        seed: data-order seed; None: the run's ``--seed_everything``.
        max_val_pairs: cap on validation pairs.
    """

    def __init__(
        self,
        root: str | None = None,
        data_dir: str | None = None,
        samples_per_prompt: int = 8,
        pairs_per_prompt: int | None = 4,
        multi_reward: bool = True,
        build_seed: int = 0,
        max_prompts: int | None = None,
        batch_size: int = 32,
        proportion_empty_prompts: float = 0.0,
        num_workers: int = 0,
        seed: int | None = None,
        max_val_pairs: int | None = None,
    ) -> None:
        from lightning_pref.minipick.store import AssetSettings

        self.capo_settings = CaPOSettings(
            samples_per_prompt,
            pairs_per_prompt,
            build_seed,
            multi_reward=multi_reward,
            max_prompts=max_prompts,
        )
        self.data_dir, self.build_on_use = data_dir, root is None
        folder = Path(root) if root is not None else capo_cache_dir(data_dir, self.capo_settings)
        super().__init__(
            root=str(folder),
            resolution=AssetSettings().image_size,
            hflip=False,  # captions name left and right
            proportion_empty_prompts=proportion_empty_prompts,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            max_val_pairs=max_val_pairs,
        )

    def _ensure(self) -> None:
        if self.build_on_use:
            from lightning_pref.minipick.store import ensure_asset

            build = partial(_build_from_assets, data_dir=self.data_dir, settings=self.capo_settings)
            ensure_asset(self.csv_path.parent, build, "CaPO pairs")

    def prepare_data(self) -> None:
        """Build the CaPO folder if the cache lacks it, then check the CSV."""
        self._ensure()
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Make sure the folder exists (also in processes that skipped ``prepare_data``)."""
        self._ensure()
        super().setup(stage)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m lightning_pref.minipick.capo_data --out DIR``: write a CaPO pair folder."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder to write (images, pairs.csv)")
    parser.add_argument("--data_dir", default=None, help="MiniPick asset cache")
    parser.add_argument("--samples_per_prompt", type=int, default=8)
    parser.add_argument("--pairs_per_prompt", type=int, default=4, help="0: every front pair")
    parser.add_argument("--single_reward", action="store_true", help="the proxy alone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = CaPOSettings(
        args.samples_per_prompt, args.pairs_per_prompt or None, args.seed,
        multi_reward=not args.single_reward,
    )  # fmt: skip
    info = _build_from_assets(Path(args.out), args.data_dir, settings)
    print(json.dumps({k: v for k, v in info.items() if k != "settings"}, indent=1))
    return info


if __name__ == "__main__":
    main()
