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

This module builds a pair folder from explicit inputs (:func:`build_capo_folder`: a policy and
scorers; :func:`build_capo_pairs`: a base-model folder and a proxy folder).
:meth:`~lightning_pref.minipick.assets.MiniPickAssets.capo_dir` builds it in the MiniPick cache;
:mod:`lightning_pref.minipick.capo_data` reads it, and writes it anywhere from the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_pref.data.calibrated import CalibratedPair, calibrated_pairs, write_pair_csv
from lightning_pref.minipick.aesthetic import MiniPickAesthetic
from lightning_pref.minipick.build import png_bytes
from lightning_pref.minipick.proxy import MiniPickScore
from lightning_pref.minipick.world import prompts
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import sample_images
from lightning_pref.scoring.base import Scorer

__all__ = [
    "CAPO_DATA_VERSION",
    "CaPOSettings",
    "build_capo_folder",
    "build_capo_pairs",
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
    proxy: list[Scorer] = [MiniPickScore.from_pretrained(proxy_dir)]
    if not settings.multi_reward:
        return proxy
    return [*proxy, MiniPickAesthetic(scale=settings.aesthetic_scale).eval()]


def build_capo_pairs(
    base_dir: Path, proxy_dir: Path, out_dir: Path, settings: CaPOSettings
) -> dict:
    """Write a CaPO pair folder from a MiniPick base-model folder and a proxy-reward folder.

    The rewards are the proxy and (``settings.multi_reward``) the aesthetic scorer; the prompts are
    MiniPick's ``train`` and ``validation`` splits. Returns :func:`build_capo_folder`'s info.
    """
    policy = DiffusionPolicy(pretrained=str(base_dir))
    policy.build()
    policy.eval()
    scorers = _default_scorers(proxy_dir, settings)
    splits = {"train": prompts("train"), "validation": prompts("validation")}
    return build_capo_folder(out_dir, policy, scorers, splits, settings)
