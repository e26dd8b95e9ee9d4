"""Evaluate many tuned runs against one base model, sampling and scoring the base only once.

:func:`lightning_pref.runs.evaluate_run` samples and scores the base model for every run it
evaluates. A leaderboard compares many runs with the same base on the same prompts and seeds, so
the base's per-sample scores and its diversity come out the same every time. :class:`BaseCache`
keeps them, keyed on everything they depend on: the base policy's class and weights, the prompts,
the number of samples, the evaluation seed, the sampler settings, the batch size, the device and
each scorer's class and weights. It holds them in memory and, given a folder, as JSON files, so a
resumed leaderboard reuses them too. A report computed with the cache is identical to the one
:func:`~lightning_pref.evaluation.evaluate_policies` computes (scores are float64, and JSON keeps
a float64 exactly).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_pref.errors import ConfigError
from lightning_pref.evaluation.args import EvaluateArgs
from lightning_pref.evaluation.compare import SamplingOptions, pixel_diversity, sample_and_score
from lightning_pref.evaluation.report import EvalReport, report_from_scores
from lightning_pref.evaluation.setup import prepare_evaluation
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import Denoiser, sample_plan
from lightning_pref.scoring import Scorer

__all__ = [
    "BaseCache",
    "BaseSamples",
    "BaseUse",
    "base_key",
    "evaluate_policies_cached",
    "evaluate_run_cached",
    "state_digest",
]


@dataclass(frozen=True)
class BaseSamples:
    """What evaluation needs of the base model: its scores and its diversity."""

    scores: dict[str, list[float]]  # per scorer, one score per sample of the sample plan
    diversity: float | None  # None: diversity not measured
    seconds: float  # wall time it took to sample and score them


@dataclass(frozen=True)
class BaseUse:
    """How one evaluation got the base's samples."""

    hit: bool  # True: from the cache
    seconds: float  # the time sampling the base took (on a hit: the time saved)


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and the bytes of every tensor."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, Tensor):
            digest.update(f"{name}={value!r}".encode())
            continue
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        flat = value.detach().cpu().contiguous().reshape(-1)  # [numel]
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def base_key(
    policy: DiffusionPolicy,
    prompts: Sequence[str],
    scorers: dict[str, Scorer],
    settings: dict[str, Any],
) -> str:
    """The cache key of a base model's samples: a hash of everything they depend on.

    Args:
        policy: the base policy (its class and weights).
        prompts: the evaluation prompts.
        scorers: the scorers by name (class, weights and part names of each).
        settings: the other inputs of sampling and scoring (seed, sampler, batch size, ...).
    """
    identity = {
        "policy": [_class_name(policy), state_digest(policy)],
        "prompts": list(prompts),
        "scorers": {
            name: [_class_name(s), state_digest(s), list(s.part_names)]
            for name, s in scorers.items()
        },
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class BaseCache:
    """The base model's samples by :func:`base_key`, in memory and optionally as JSON files.

    Args:
        folder: where to keep the entries across processes; None keeps them in memory only.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, BaseSamples] = {}

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key[:32]}.json" if self.folder is not None else None

    def get(self, key: str) -> BaseSamples | None:
        """The entry for ``key``, or None (also for an unreadable or foreign file)."""
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            entry = BaseSamples(data["scores"], data["diversity"], float(data["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if data.get("key") != key:
            return None
        self._memory[key] = entry
        return entry

    def put(self, key: str, entry: BaseSamples) -> None:
        """Store ``entry``; the file is written under a temporary name, then renamed."""
        self._memory[key] = entry
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, **asdict(entry)}) + "\n")
        tmp.replace(path)


def _base_samples(
    base: DiffusionPolicy,
    plan: tuple[list[str], list[int]],
    scorers: dict[str, Scorer],
    diversity_prompts: list[str],
    settings: dict[str, Any],
    sampling: dict[str, Any],
) -> BaseSamples:
    """Sample and score the base model as :func:`evaluate_policies` does, and time it."""
    start = time.perf_counter()
    scores = sample_and_score(
        base, plan, scorers, settings["batch_size"], "sampling base", **sampling
    )
    k, seed = settings["samples_per_prompt_for_diversity"], settings["seed"]
    diversity = pixel_diversity(base, diversity_prompts, seed, k, **sampling) if k >= 2 else None
    lists = {name: [float(v) for v in values.tolist()] for name, values in scores.items()}
    return BaseSamples(lists, diversity, time.perf_counter() - start)


def evaluate_policies_cached(
    cache: BaseCache,
    base: DiffusionPolicy,
    tuned: DiffusionPolicy,
    prompts: Sequence[str],
    scorers: dict[str, Scorer],
    gold: str,
    num_samples: int,
    seed: int,
    options: SamplingOptions | None = None,
    tuned_negative: Denoiser | None = None,
) -> tuple[EvalReport, BaseUse]:
    """:func:`~lightning_pref.evaluation.compare.evaluate_policies`, the base's samples cached.

    The arguments are those of ``evaluate_policies``, after ``cache``. ``tuned_negative`` guides
    the tuned side only (a negative-model run: its base guided by it); the cached base is always
    sampled with plain CFG. Returns the same report, and whether the base came from the cache
    (and how long sampling it took).
    """
    if gold not in scorers:
        raise ConfigError(f"the gold scorer '{gold}' is not among the scorers {sorted(scorers)}")
    options = options or SamplingOptions()
    plan = sample_plan(list(prompts), num_samples, seed)
    sampling, batch_size = options.sampler, options.batch_size
    k = options.samples_per_prompt_for_diversity
    subset = options.diversity_subset(prompts)
    settings = {"num_samples": num_samples, "seed": seed, "batch_size": batch_size}
    settings |= {"samples_per_prompt_for_diversity": k, "num_diversity_prompts": len(subset)}
    settings |= {"device": str(base.unet.device)}
    key = base_key(base, prompts, scorers, {**settings, **sampling})
    entry = cache.get(key)
    use = BaseUse(entry is not None, entry.seconds if entry is not None else 0.0)
    if entry is None:
        entry = _base_samples(base, plan, scorers, subset, settings, sampling)
        cache.put(key, entry)
        use = BaseUse(False, entry.seconds)
    base_s = {name: torch.tensor(v, dtype=torch.float64) for name, v in entry.scores.items()}
    guided = {**sampling, "uncond_denoiser": tuned_negative}
    tuned_s = sample_and_score(tuned, plan, scorers, batch_size, "sampling tuned", **guided)
    diversity = pixel_diversity(tuned, subset, seed, k, **guided) if k >= 2 else None
    report = report_from_scores(
        gold, base_s, tuned_s, (entry.diversity, diversity), plan, sampling, seed
    )
    return report, use


def evaluate_run_cached(args: EvaluateArgs, cache: BaseCache) -> tuple[EvalReport, BaseUse]:
    """The report of :func:`~lightning_pref.runs.evaluate_run`, with the base from ``cache``.

    Unlike ``evaluate_run`` this writes nothing (no report.json, grid or events) and prints
    nothing; ``args.out`` is ignored.

    Args:
        args: what to evaluate and how (as ``python -m lightning_pref evaluate`` takes it).
        cache: where the base model's samples are looked up and stored.
    """
    setup = prepare_evaluation(args, negative_guidance=True)
    if setup.base_negative is not None:  # the cache holds the plain base only
        raise ConfigError(
            "--baseline_negative (or a negative-model run as --baseline) is not cached: evaluate "
            "it with `python -m lightning_pref evaluate`"
        )
    options = args.sampling_options()
    report, use = evaluate_policies_cached(
        cache,
        setup.base.policy,
        setup.tuned.policy,
        setup.prompts,
        setup.scorers,
        args.gold,
        args.num_samples,
        args.seed,
        options,
        tuned_negative=setup.tuned_negative,
    )
    return setup.finish(report, args), use
