"""A sweep's summary: each run's status, step and final metrics, and their mean ± std over seeds.

A run's record comes from ``<run>/version_0/metrics.json``, written by the run itself::

    {"status": "finished" | "preempted" | "running", "global_step": int, "max_steps": int,
     "metrics": {"train/loss": float, "val/loss": float, ...}}

A run without one (made before that file existed, or still in its first steps) falls back to its
TensorBoard event files: the last value of every scalar, the step as the last logged step + 1
(TensorBoard's step is the 0-based index of the optimizer step) and ``max_steps`` from the run's
``config.yaml``. Its status is then ``finished`` or ``failed`` when a local launch recorded its
exit code (``<run>/launch.json``), else ``unknown``. A run with neither file is ``missing`` (or
``failed`` when its local launch failed).

The per-grid-point block averages the runs that are ``finished`` or ``unknown`` and have the
metric; ``std`` is the sample standard deviation (n - 1), shown when two or more runs count.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from lightning_pref.commands.sweep.plan import short_names  # one naming rule for runs and columns
from lightning_pref.errors import ConfigError

__all__ = ["DEFAULT_METRICS", "event_scalars", "is_finished", "read_run", "write_summary"]

DEFAULT_METRICS = ("val/loss", "val/implicit_acc", "train/loss")
"""Shown when a run has them, unless ``--metrics`` names others."""
_AVERAGED = ("finished", "unknown")
MISSING = "—"


def event_scalars(version_dir: Path) -> tuple[int | None, dict[str, float]]:
    """The last value of each scalar in a run's TensorBoard event files, and the step after it.

    The files are read oldest first, so after a resume the values logged by the resumed run come
    last, even where it logged a step again (its checkpoint was older than the last log).

    Returns:
        ``(last logged step + 1, {tag: last value})``, or ``(None, {})`` without event files.
    """
    if not any(version_dir.glob("events.out.tfevents.*")):
        return None, {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
    acc.Reload()
    values: dict[str, float] = {}
    step: int | None = None
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        if events:
            values[tag] = float(events[-1].value)
            step = max(step or 0, events[-1].step + 1)
    return step, values


def _config_max_steps(version_dir: Path) -> int | None:
    path = version_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    max_steps = (config.get("trainer") or {}).get("max_steps")
    return max_steps if isinstance(max_steps, int) and max_steps > 0 else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or caught half-written
    return data if isinstance(data, dict) else None


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's ``status``, ``global_step``, ``max_steps``, ``metrics`` and their ``source``."""
    version_dir = run_dir / "version_0"
    launch = _read_json(run_dir / "launch.json")
    exit_code = launch.get("exit_code") if launch else None
    record = _read_json(version_dir / "metrics.json")
    if record is not None:
        return {
            "status": str(record.get("status", "unknown")),
            "global_step": record.get("global_step"),
            "max_steps": record.get("max_steps"),
            "metrics": dict(record.get("metrics") or {}),
            "source": "metrics.json",
            "exit_code": exit_code,
        }
    step, values = event_scalars(version_dir)
    if exit_code is not None:
        status = "finished" if exit_code == 0 else "failed"
    else:
        status = "unknown" if values else "missing"
    return {
        "status": status,
        "global_step": step,
        "max_steps": _config_max_steps(version_dir),
        "metrics": values,
        "source": "events" if values else None,
        "exit_code": exit_code,
    }


def is_finished(run_dir: Path) -> bool:
    """Whether ``metrics.json`` says finished or, without it, a local launch exited 0."""
    record = _read_json(run_dir / "version_0" / "metrics.json")
    if record is not None:
        return record.get("status") == "finished"
    launch = _read_json(run_dir / "launch.json")
    return launch is not None and launch.get("exit_code") == 0


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(plan: dict[str, Any], sweep_dir: Path, metrics: list[str] | None) -> dict[str, Any]:
    """Every planned run's record, and the mean ± std of each metric per grid point."""
    runs = []
    for run in plan["runs"]:
        record = read_run(sweep_dir / run["name"])
        runs.append({"name": run["name"], "values": run["values"], "seed": run["seed"], **record})
    if metrics is None:
        present = set().union(*(r["metrics"] for r in runs)) if runs else set()
        metrics = [m for m in DEFAULT_METRICS if m in present]
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run["values"].items()), []).append(run)
    points = []
    for point, members in groups.items():
        counted = [r for r in members if r["status"] in _AVERAGED]
        stats = {
            m: _stats([r["metrics"][m] for r in counted if r["metrics"].get(m) is not None])
            for m in metrics
        }
        points.append(
            {"values": dict(point), "seeds": [r["seed"] for r in members], "metrics": stats}
        )
    return {"sweep": plan["name"], "metrics": metrics, "runs": runs, "grid_points": points}


def _number(value: float | None) -> str:
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_markdown(summary: dict[str, Any]) -> str:
    """The runs table and the per-grid-point table, as Markdown."""
    metrics, runs = summary["metrics"], summary["runs"]
    keys = list(runs[0]["values"]) if runs else []
    labels = short_names(keys)
    lines = [f"# Sweep {summary['sweep']}", "", f"{len(runs)} runs.", ""]
    lines += [_row(["run", *(labels[k] for k in keys), "seed", "status", "step", *metrics])]
    lines += [_row(["---"] * (4 + len(keys) + len(metrics)))]
    for run in runs:
        step = MISSING if run["global_step"] is None else str(run["global_step"])
        if run["max_steps"] and run["global_step"] is not None:
            step += f"/{run['max_steps']}"
        values = [_number(run["metrics"].get(m)) for m in metrics]
        cells = [run["name"], *run["values"].values(), str(run["seed"]), run["status"], step]
        lines.append(_row([*cells, *values]))
    lines += ["", "Mean ± std over seeds (n: runs counted, finished or unknown, of all).", ""]
    lines += [_row([*(labels[k] for k in keys), "n", *metrics])]
    lines += [_row(["---"] * (1 + len(keys) + len(metrics)))]
    for point in summary["grid_points"]:
        stats = point["metrics"].values()
        counted = max((s["n"] for s in stats), default=0)
        cells = [f"{_number(s['mean'])} ± {_number(s['std'])}" for s in stats]
        lines.append(_row([*point["values"].values(), f"{counted}/{len(point['seeds'])}", *cells]))
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, metrics: list[str] | None = None) -> dict[str, Any]:
    """Write ``summary.md`` and ``summary.json`` into the sweep folder, print the tables.

    Args:
        sweep_dir: the sweep's folder (holding ``sweep.json``).
        metrics: the metric columns; by default those of ``DEFAULT_METRICS`` that a run has.

    Returns:
        The summary as written to ``summary.json``.
    """
    plan = _read_json(sweep_dir / "sweep.json")
    if plan is None:
        raise ConfigError(f"'{sweep_dir}' is not a sweep folder: it has no sweep.json")
    summary = summarize(plan, sweep_dir, metrics or plan.get("metrics"))
    table = format_markdown(summary)
    (sweep_dir / "summary.md").write_text(table)
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table}\nwritten: {sweep_dir / 'summary.md'}, {sweep_dir / 'summary.json'}")
    return summary
