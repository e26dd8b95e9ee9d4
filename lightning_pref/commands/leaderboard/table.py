"""The leaderboard's summary: per-job results aggregated per method, as Markdown and JSON.

A job result is the dict :mod:`lightning_pref.commands.leaderboard.run` writes to
``results/<method>_seed<S>.json``:
``method``, ``config``, ``seed``, ``status`` (``ok`` or ``failed``), ``failed_stage``, ``error``,
``log`` (relative to the leaderboard folder), ``fit_seconds``, ``eval_seconds``, ``settings``
(``num_samples``, ``eval_seed``), ``machine`` (``cpu_count``, ``torch_threads``), ``base_cache``
(``hit``, ``base_seconds``) and ``report`` (an :class:`~lightning_pref.evaluation.EvalReport` as a
dict; None when the job failed). Means are over the method's successful seeds; the spread of the
win rate is the sample standard deviation over seeds.

The table shows the gold scorer's headline parts (:data:`HEADLINE_PARTS`: MiniPick's fidelity and
taste) as columns of their own, each as the mean win rate and the mean score; the other parts
(``<scorer>.<part>``, :attr:`~lightning_pref.scoring.Scorer.part_names`) are in the JSON only.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["HEADLINE_PARTS", "format_table", "summarize"]

HEADLINE_PARTS = ("fidelity", "taste")  # parts of the gold score shown as table columns

Result = dict[str, Any]


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values, or None if any is missing (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def _by_method(results: Sequence[Result]) -> dict[str, list[Result]]:
    """Results grouped by method, methods in order of first appearance, each sorted by seed."""
    groups: dict[str, list[Result]] = {}
    for result in results:
        groups.setdefault(result["method"], []).append(result)
    return {m: sorted(g, key=lambda r: r["seed"]) for m, g in groups.items()}


def _method_summary(method: str, group: list[Result]) -> dict[str, Any]:
    """Aggregate one method's results over its seeds."""
    ok = [r for r in group if r["status"] == "ok"]
    reports = [r["report"] for r in ok]
    rates = [rep["win_rate"] for rep in reports]
    names = list(reports[0]["scores"]) if reports else []
    scores = {
        name: {
            "base": _mean([rep["scores"][name]["base_mean"] for rep in reports]),
            "tuned": _mean([rep["scores"][name]["tuned_mean"] for rep in reports]),
            "win_rate": _mean([rep["scores"][name].get("win_rate") for rep in reports]),
        }
        for name in names
        if all(name in rep["scores"] for rep in reports)
    }
    implicit = [rep["implicit_acc"] for rep in reports if rep["implicit_acc"] is not None]
    return {
        "method": method,
        "config": group[0]["config"],
        "gold": reports[0]["gold"] if reports else None,
        "seeds": [r["seed"] for r in ok],
        "failed_seeds": [r["seed"] for r in group if r["status"] != "ok"],
        "win_rate_mean": _mean(rates),
        "win_rate_std": statistics.stdev(rates) if len(rates) > 1 else None,
        "per_seed": [
            {
                "seed": r["seed"],
                "win_rate": r["report"]["win_rate"],
                "ci": r["report"]["win_rate_ci"],
            }
            for r in ok
        ],
        "scores": scores,
        "diversity_base": _mean([rep["diversity_base"] for rep in reports]),
        "diversity_tuned": _mean([rep["diversity_tuned"] for rep in reports]),
        "implicit_acc": _mean(implicit),
        "fit_seconds": _mean([r["fit_seconds"] for r in ok]),
        "eval_seconds": _mean([r["eval_seconds"] for r in ok]),
    }


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _settings(results: Sequence[Result]) -> dict[str, Any]:
    """The settings the results were produced with (lists: several values were mixed)."""
    reports = [r["report"] for r in results if r["report"] is not None]
    keys = ("num_steps", "guidance_scale", "eta")
    return {
        "seeds": sorted(_unique([r["seed"] for r in results])),
        "num_samples": _unique([r["settings"]["num_samples"] for r in results]),
        "eval_seed": _unique([r["settings"]["eval_seed"] for r in results]),
        **{key: _unique([rep[key] for rep in reports]) for key in keys},
        "cpu_count": _unique([r["machine"]["cpu_count"] for r in results]),
        "torch_threads": _unique([r["machine"]["torch_threads"] for r in results]),
    }


def _base_cache(results: Sequence[Result]) -> dict[str, Any]:
    """How often the base model was sampled and reused, and the eval time the reuse saved."""
    used = [r["base_cache"] for r in results if r["status"] == "ok" and r["base_cache"]]
    misses = [u["base_seconds"] for u in used if not u["hit"]]
    hits = [u["base_seconds"] for u in used if u["hit"]]
    return {
        "sampled": len(misses),
        "sampled_seconds": sum(misses),
        "reused": len(hits),
        "saved_seconds": sum(hits),
    }


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    """The leaderboard as a JSON-ready dict: settings, one entry per method, failures, cache."""
    failed = [
        {k: r[k] for k in ("method", "seed", "failed_stage", "error", "log")}
        for r in results
        if r["status"] != "ok"
    ]
    return {
        "settings": _settings(results),
        "methods": [_method_summary(m, g) for m, g in _by_method(results).items()],
        "failed": failed,
        "base_cache": _base_cache(results),
    }


def _join(values: list[Any]) -> str:
    return "/".join(str(v) for v in values) if values else "-"


def _arrow(base: float | None, tuned: float | None, digits: int) -> str:
    if base is None or tuned is None:
        return "-"
    return f"{base:.{digits}f} → {tuned:.{digits}f}"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _header(settings: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in settings["seeds"])
    return (
        f"Training seeds {seeds} · {_join(settings['num_samples'])} samples · "
        f"eval seed {_join(settings['eval_seed'])} · DDIM {_join(settings['num_steps'])} steps, "
        f"CFG {_join(settings['guidance_scale'])}, η {_join(settings['eta'])} · machine: "
        f"{_join(settings['cpu_count'])} CPUs, torch threads {_join(settings['torch_threads'])}"
    )


def _part_cell(score: dict[str, Any] | None) -> str:
    """``win rate (base → tuned)`` of one part, or ``-``."""
    if score is None:
        return "-"
    return f"{_fmt(score['win_rate'], '.3f')} ({_arrow(score['base'], score['tuned'], 3)})"


def _row(method: dict[str, Any], parts: list[str], extra: list[str]) -> str:
    """One Markdown row of the table."""
    name = f"{method['method']} (`{Path(method['config']).name}`)"
    failed = [f"{s}: failed" for s in method["failed_seeds"]]
    if not method["seeds"]:
        blank = ["-"] * (5 + len(parts) + len(extra))
        return "| " + " | ".join([name, "failed", "; ".join(failed), *blank]) + " |"
    mean, std = method["win_rate_mean"], method["win_rate_std"]
    rate = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    per_seed = {
        p["seed"]: f"{p['seed']}: {p['win_rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"
        for p in method["per_seed"]
    }
    per_seed |= {s: f"{s}: failed" for s in method["failed_seeds"]}
    seeds = [per_seed[s] for s in sorted(per_seed)]
    scores = method["scores"]
    gold = scores.get(method["gold"], {})
    cells = [
        name,
        rate,
        "; ".join(seeds),
        _arrow(gold.get("base"), gold.get("tuned"), 3),
        *(_part_cell(scores.get(n)) for n in parts),
        *(_arrow(scores[n]["base"], scores[n]["tuned"], 2) if n in scores else "-" for n in extra),
        _arrow(method["diversity_base"], method["diversity_tuned"], 3),
        _fmt(method["implicit_acc"], ".3f"),
        _fmt(method["fit_seconds"], ".0f", " s"),
        _fmt(method["eval_seconds"], ".0f", " s"),
    ]
    return "| " + " | ".join(cells) + " |"


def _notes(summary: dict[str, Any]) -> list[str]:
    """Lines under the table: failures, then the base cache."""
    lines = [
        f"- Failed: {f['method']} seed {f['seed']} ({f['failed_stage']}: {f['error']}); "
        f"log: `{f['log']}`"
        for f in summary["failed"]
    ]
    cache = summary["base_cache"]
    if cache["sampled"] or cache["reused"]:
        lines.append(
            f"- Base model: sampled and scored {cache['sampled']} time(s) "
            f"({cache['sampled_seconds']:.0f} s, inside those jobs' eval time), reused from the "
            f"cache {cache['reused']} time(s), saving {cache['saved_seconds']:.0f} s of eval time."
        )
    return lines


def format_table(results: Sequence[Result]) -> str:
    """The leaderboard as Markdown: a settings line, one row per method, then notes.

    Args:
        results: job results (see the module docstring), in the order rows should appear.
    """
    summary = summarize(results)
    methods = summary["methods"]
    gold = next((m["gold"] for m in methods if m["gold"]), "gold")
    names = {n for m in methods for n in m["scores"]}
    parts = [f"{gold}.{p}" for p in HEADLINE_PARTS if f"{gold}.{p}" in names]
    scorers = {n for n in names if not any(n.startswith(f"{o}.") for o in names)}
    extra = sorted(scorers - {gold})
    columns = [
        "method",
        f"{gold} win rate vs base (mean ± std over seeds)",
        "per seed [95% CI]",
        f"mean {gold} (base → tuned)",
        *(f"{p.split('.', 1)[1]}: win rate (base → tuned)" for p in parts),
        *(f"{n} (base → tuned)" for n in extra),
        "diversity (base → tuned)",
        "implicit acc.",
        "fit time",
        "eval time",
    ]
    lines = [_header(summary["settings"]), ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [_row(m, parts, extra) for m in methods]
    notes = _notes(summary)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
