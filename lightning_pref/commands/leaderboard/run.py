"""``python -m lightning_pref leaderboard``: train several methods on fixed seeds, rank them.

For each config and training seed, one job, one after another:

1. **fit** in a subprocess (a crash or a leak in one method cannot take down the others):
   ``python -m lightning_pref fit --config CFG --seed_everything SEED`` with the run written to
   ``OUT/runs/<method>/seed<SEED>`` and its output to ``OUT/logs/<method>_seed<SEED>.log``;
   ``--fit_args`` are appended. Its wall time is recorded, and a finished fit leaves
   ``leaderboard_fit.json`` in the run folder, so a resumed leaderboard does not train it again.
2. **evaluate** the run against its base model in this process, exactly as
   ``python -m lightning_pref evaluate`` computes its report (same ``--num_samples`` and
   ``--eval_seed`` for every job; ``--eval_args`` passes further ``evaluate`` options), with the
   base model's samples cached in ``OUT/base_cache``
   (:mod:`lightning_pref.evaluation.base_cache`), so the
   base is sampled once per leaderboard, not once per job.
3. The job's result goes to ``OUT/results/<method>_seed<SEED>.json``; a job whose result exists
   is skipped (``--force`` runs it again), so an interrupted leaderboard resumes. A failed fit or
   evaluation is recorded as failed, with its log, and the leaderboard goes on.

At the end ``OUT/leaderboard.md`` and ``OUT/leaderboard.json``
(:mod:`lightning_pref.commands.leaderboard.table`) are written and the table is printed; the exit
code
is 1 if a job failed. ``--table_only`` rebuilds them from the results already there, training
nothing.

A method is named after its config: the TensorBoard logger's ``name`` if the config sets one other
than the file's stem, else the stem without a trailing ``_minipick`` (``dpo_minipick.yaml``: dpo).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lightning_pref.commands.leaderboard.args import LeaderboardArgs, parse_args
from lightning_pref.commands.leaderboard.table import format_table, summarize
from lightning_pref.errors import ConfigError

if TYPE_CHECKING:
    from lightning_pref.evaluation.base_cache import BaseCache, BaseUse
    from lightning_pref.evaluation.report import EvalReport

__all__ = ["FIT_MARKER", "Job", "main", "method_name", "run_jobs"]

FIT_MARKER = "leaderboard_fit.json"  # in a run folder: the fit finished (and how long it took)


@dataclass(frozen=True)
class Job:
    """One method trained with one seed, and where its files go under the leaderboard folder."""

    method: str
    config: str
    seed: int

    @property
    def name(self) -> str:
        """``<method>_seed<seed>``: the stem of the job's log and result files."""
        return f"{self.method}_seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        """The training run's version folder."""
        return out / "runs" / self.method / f"seed{self.seed}"

    def log(self, out: Path) -> Path:
        """The log of the fit subprocess (and of a failed evaluation)."""
        return out / "logs" / f"{self.name}.log"

    def result(self, out: Path) -> Path:
        """The job's result JSON."""
        return out / "results" / f"{self.name}.json"


def method_name(config: str | Path) -> str:
    """A config's method name (module docstring): its logger's name, or its stem."""
    try:
        data = yaml.safe_load(Path(config).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config '{config}' is not valid YAML: {err}") from None
    trainer = data.get("trainer") if isinstance(data, dict) else None
    logger = trainer.get("logger") if isinstance(trainer, dict) else None
    init = logger.get("init_args") if isinstance(logger, dict) else None
    name = init.get("name") if isinstance(init, dict) else None
    stem = Path(config).stem
    if not isinstance(name, str) or not name or name == stem:
        name = stem.removesuffix("_minipick")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"method name '{name}' of '{config}' is not usable as a file name")
    return name


def make_jobs(args: LeaderboardArgs) -> list[Job]:
    """One job per config and seed, config by config; two configs may not share a method."""
    methods: dict[str, str] = {}
    for config in args.configs:
        name = method_name(config)
        if name in methods:
            raise ConfigError(f"'{config}' and '{methods[name]}' are both method '{name}'")
        methods[name] = config
    return [Job(m, c, s) for m, c in methods.items() for s in args.seeds]


def fit_command(job: Job, out: Path, fit_args: list[str]) -> list[str]:
    """The ``fit`` command line of a job."""
    logger = "--trainer.logger.init_args."
    return [
        *(sys.executable, "-m", "lightning_pref", "fit", "--config", job.config),
        *("--seed_everything", str(job.seed)),
        *(f"{logger}save_dir", str(out / "runs"), f"{logger}name", job.method),
        *(f"{logger}version", f"seed{job.seed}", *fit_args),
    ]


def run_fit(job: Job, out: Path, fit_args: list[str], force: bool) -> tuple[int, float]:
    """Train a job in a subprocess, unless a finished fit is there; (exit code, wall seconds)."""
    run_dir, log = job.run_dir(out), job.log(out)
    marker = run_dir / FIT_MARKER
    if marker.is_file() and not force:
        return 0, float(json.loads(marker.read_text())["fit_seconds"])
    if run_dir.exists():  # a fit that did not finish, or --force: start clean
        shutil.rmtree(run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = fit_command(job, out, fit_args)
    with log.open("w") as stream:
        stream.write(shlex.join(command) + "\n\n")
        stream.flush()
        start = time.perf_counter()
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
    if code == 0:
        marker.write_text(json.dumps({"fit_seconds": seconds}) + "\n")
    return code, seconds


def evaluate_job(
    job: Job, out: Path, args: LeaderboardArgs, cache: BaseCache
) -> tuple[EvalReport, BaseUse]:
    """Evaluate a job's run against its base: (``EvalReport``, ``BaseUse``)."""
    from lightning_pref.evaluation.args import parse_evaluate_args
    from lightning_pref.evaluation.base_cache import evaluate_run_cached

    argv = [*args.eval_args, "--run", str(job.run_dir(out))]
    argv += ["--num_samples", str(args.num_samples), "--seed", str(args.eval_seed)]
    return evaluate_run_cached(parse_evaluate_args(argv), cache)


def _machine() -> dict[str, int | None]:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def run_job(job: Job, out: Path, args: LeaderboardArgs, cache: BaseCache) -> dict[str, Any]:
    """Fit and evaluate one job; a failure is recorded in the result, never raised."""
    result: dict[str, Any] = {
        "method": job.method,
        "config": job.config,
        "seed": job.seed,
        "status": "failed",
        "failed_stage": "fit",
        "error": None,
        "log": str(job.log(out).relative_to(out)),
        "run_dir": str(job.run_dir(out).relative_to(out)),
        "fit_seconds": None,
        "eval_seconds": None,
        "settings": {"num_samples": args.num_samples, "eval_seed": args.eval_seed},
        "machine": _machine(),
        "base_cache": None,
        "report": None,
    }
    code, result["fit_seconds"] = run_fit(job, out, args.fit_args, args.force)
    if code != 0:
        return {**result, "error": f"exit code {code}"}
    start = time.perf_counter()
    try:
        report, use = evaluate_job(job, out, args, cache)
    except Exception as err:  # recorded; the next method still runs
        with job.log(out).open("a") as stream:
            stream.write("\nleaderboard: evaluation failed\n" + traceback.format_exc())
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        error = f"{type(err).__name__}: {first}" if first else type(err).__name__
        seconds = time.perf_counter() - start
        return {**result, "failed_stage": "eval", "error": error, "eval_seconds": seconds}
    result |= {"status": "ok", "failed_stage": None, "eval_seconds": time.perf_counter() - start}
    result["base_cache"] = {"hit": use.hit, "base_seconds": use.seconds}
    return {**result, "report": json.loads(report.to_json())}


def _write_json(path: Path, data: Any) -> None:
    """Write JSON under a temporary name, then rename: an interrupted write leaves no result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class _Progress:
    """One line per job as it starts and ends, with elapsed time and an ETA."""

    def __init__(self, total: int, to_run: int) -> None:
        self.total, self.to_run, self.done = total, to_run, 0
        self.start = time.perf_counter()

    def _times(self) -> str:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.to_run - self.done) if self.done else None
        return f"elapsed {_clock(elapsed)}, ETA {_clock(eta) if eta is not None else '?'}"

    def say(self, index: int, job: Job, what: str, finished: bool = False) -> None:
        """Print ``[i/n] method seed S: what (elapsed, ETA)``."""
        self.done += finished
        print(f"[{index}/{self.total}] {job.method} seed {job.seed}: {what} ({self._times()})")
        sys.stdout.flush()


def _outcome(result: dict[str, Any]) -> str:
    times = f"fit {result['fit_seconds']:.0f} s"
    if result["eval_seconds"] is not None:
        times += f", eval {result['eval_seconds']:.0f} s"
    if result["status"] == "ok":
        return f"done, win rate {result['report']['win_rate']:.3f} ({times})"
    return f"FAILED in {result['failed_stage']}: {result['error']} ({times}; log {result['log']})"


def run_jobs(jobs: list[Job], args: LeaderboardArgs) -> list[dict[str, Any]]:
    """Run the jobs one after another (skipping those with results); return every result."""
    from lightning_pref.evaluation.base_cache import BaseCache

    out = Path(args.out)
    cache = BaseCache(out / "base_cache")
    to_run = [j for j in jobs if args.force or not j.result(out).is_file()]
    progress = _Progress(len(jobs), len(to_run))
    results = []
    for index, job in enumerate(jobs, 1):
        if job not in to_run:
            results.append(json.loads(job.result(out).read_text()))
            progress.say(index, job, f"skipped: {job.result(out)} exists (--force reruns it)")
            continue
        progress.say(index, job, "started")
        result = run_job(job, out, args, cache)
        _write_json(job.result(out), result)
        results.append(result)
        progress.say(index, job, _outcome(result), finished=True)
    return results


def load_results(out: Path, jobs: list[Job] | None) -> list[dict[str, Any]]:
    """Existing results: those of ``jobs`` in their order, or all (by method and seed)."""
    if jobs is not None:
        paths = [j.result(out) for j in jobs if j.result(out).is_file()]
    else:
        paths = sorted((out / "results").glob("*.json"))
    results = [json.loads(p.read_text()) for p in paths]
    if not results:
        raise ConfigError(f"no results in '{out / 'results'}' to build a table from")
    return results if jobs is not None else sorted(results, key=lambda r: (r["method"], r["seed"]))


def main(argv: list[str]) -> None:
    """``python -m lightning_pref leaderboard``: run the jobs, write and print the table.

    Args:
        argv: the arguments after ``leaderboard`` (see ``--help``).

    Raises:
        SystemExit: with code 1 after the table is written, if a job failed (not with
            ``--table_only``).
    """
    args = parse_args(argv)
    out = Path(args.out)
    jobs = make_jobs(args) if args.configs else None
    if args.table_only:
        results = load_results(out, jobs)
    else:
        assert jobs is not None
        results = run_jobs(jobs, args)
    table = format_table(results)
    (out / "leaderboard.md").write_text(table)
    _write_json(out / "leaderboard.json", summarize(results))
    print(f"\n{table}\nwritten: {out / 'leaderboard.md'}, {out / 'leaderboard.json'}")
    if not args.table_only and any(r["status"] != "ok" for r in results):
        raise SystemExit(1)
