"""Arguments of ``python -m lightning_pref sweep``: parsing and the checks made before planning.

Errors are one line: ``argparse.ArgumentError`` for what argparse rejects, ``ConfigError`` for
the rest (a malformed or repeated ``--grid``, a missing config, an option the sweep sets itself).
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_pref.cli import RaisingArgumentParser
from lightning_pref.errors import ConfigError

__all__ = [
    "OWN_OPTIONS", "SweepArgs", "canonical", "metric_list", "parse_args", "parse_grid", "parser",
    "split_values",
]  # fmt: skip

OWN_OPTIONS = ("seed_everything", "trainer.logger", "ckpt_path")
"""Keys the sweep sets itself: neither a --grid key nor in --fit_args."""


@dataclass(frozen=True)
class SweepArgs:
    """Arguments of ``python -m lightning_pref sweep`` (see ``--help``)."""

    configs: list[str]
    grid: list[tuple[str, list[str]]]
    seeds: list[int]
    name: str
    root: str = "runs"
    launcher: str = "local"
    dry_run: bool = False
    force: bool = False
    fit_args: list[str] = field(default_factory=list)
    metrics: list[str] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


_EXAMPLES = """examples:
  python -m lightning_pref sweep --config tests/configs/tiny_dpo.yaml \\
      --grid model.init_args.objective.init_args.beta=2000,5000 --seeds 0,1 --dry_run
  python -m lightning_pref sweep --config experiments/dpo_sd15.yaml --launcher slurm \\
      --grid model.init_args.objective.init_args.beta=2000,5000 --seeds 0,1,2 \\
      --partition gpu --gpus_per_node 8 --time 24:00:00 --fit_args '--trainer.devices 8'
  python -m lightning_pref sweep --summary runs/dpo_sd15_sweep

The module docstring of lightning_pref.commands.sweep.run describes names, layout and resume."""


def parser() -> argparse.ArgumentParser:
    """The argparse parser of ``sweep``, ``--summary`` mode included."""
    p = RaisingArgumentParser(
        prog="python -m lightning_pref sweep",
        description="A grid of fit runs x seeds, run one after another or as a SLURM array.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--config", action="append", default=[], help="fit config; repeat to add overlays")
    add("--grid", action="append", default=[], help="KEY=V1,V2,...: one swept key; repeatable")
    add("--seeds", default="0", help="comma-separated training seeds (default 0)")
    add("--name", default=None, help="sweep name (default: first config's stem + '_sweep')")
    add("--root", default="runs", help="the sweep goes to ROOT/NAME (default runs)")
    add("--launcher", choices=("local", "slurm"), default="local", help="where runs run")
    add("--dry_run", action="store_true", help="print the runs (and write the sbatch); launch none")
    add("--force", action="store_true", help="rerun finished runs (their folders are deleted)")
    add("--fit_args", default="", help="extra fit arguments, one string: --fit_args='--x 1'")
    add("--metrics", default=None, help="comma-separated metrics for the summary table")
    add("--summary", default=None, metavar="SWEEP_DIR", help="only (re)write SWEEP_DIR's summary")
    slurm = p.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time", default=None, help="time limit per run, e.g. 04:00:00")
    slurm.add_argument("--nodes", type=int, default=None)
    slurm.add_argument("--gpus_per_node", type=int, default=None, help="also sets ntasks-per-node")
    slurm.add_argument("--cpus_per_task", type=int, default=None)
    slurm.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    slurm.add_argument("--max_parallel", type=int, default=None, help="the array's %% limit")
    slurm.add_argument("--signal_lead_s", type=int, default=90, help="USR1 this long before time")
    slurm.add_argument(
        "--sbatch_line", action="append", default=[], help="extra '#SBATCH ...' line; repeatable"
    )
    return p


_SLURM_OPTIONS = (
    "partition", "time", "nodes", "gpus_per_node", "cpus_per_task", "mem", "max_parallel",
)  # fmt: skip


_VALUE_OPTIONS = ("--fit_args", "--sbatch_line")  # values that may start with --


def split_values(text: str) -> list[str]:
    """Split at commas that are not inside ``[]``, ``{}`` or ``()``."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            values, current = [*values, current.strip()], ""
        else:
            current += char
    return [*values, current.strip()]


def parse_grid(option: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` as ``(KEY, [V1, V2])``; a leading ``--`` on the key is dropped."""
    key, sep, text = option.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"--grid '{option}': write KEY=VALUE1,VALUE2,...")
    values = split_values(text)
    if values == [""]:
        raise ConfigError(f"--grid '{option}': no values after '='")
    if "" in values:
        raise ConfigError(f"--grid '{option}': an empty value (two commas in a row?)")
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid '{option}': a value is repeated")
    if canonical(key).startswith(OWN_OPTIONS):
        raise ConfigError(f"--grid '{option}': {key} is set by the sweep; sweep seeds with --seeds")
    return key, values


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_values(text)]
    except ValueError:
        raise ConfigError(f"--seeds '{text}': write integers separated by commas") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds repeats a seed: {text}")
    return seeds


def metric_list(text: str | None) -> list[str] | None:
    """``--metrics a,b`` as a list; None when not given."""
    return [m for m in split_values(text) if m] or None if text else None


def canonical(key: str) -> str:
    """A key without ``init_args`` segments: jsonargparse reads both spellings as one key."""
    return ".".join(s for s in key.split(".") if s != "init_args")


def _check_fit_args(fit_args: list[str], grid_keys: list[str]) -> None:
    grid = {canonical(k) for k in grid_keys}
    for arg in fit_args:
        key = canonical(arg.split("=")[0].lstrip("-"))
        if not arg.startswith("--"):
            continue
        if key.startswith(OWN_OPTIONS):
            raise ConfigError(f"--fit_args: {arg.split('=')[0]} is set by the sweep; drop it")
        if key in grid:
            raise ConfigError(f"--fit_args: {arg.split('=')[0]} is a --grid key; drop one")


def _glue(argv: list[str]) -> list[str]:
    """``--fit_args --x=1`` as ``--fit_args=--x=1``: argparse would take ``--x=1`` for an option."""
    glued: list[str] = []
    for arg in argv:
        if glued and glued[-1] in _VALUE_OPTIONS and not glued[-1].endswith("="):
            glued[-1] = f"{glued[-1]}={arg}"
        else:
            glued.append(arg)
    return glued


def parse_args(argv: list[str]) -> SweepArgs:
    """Parse and check the arguments; errors raise ``ArgumentError`` or ``ConfigError``."""
    ns = parser().parse_args(_glue(argv))
    if not ns.config:
        raise ConfigError("pass a config with --config (repeat it to add overlays)")
    missing = [c for c in ns.config if not Path(c).is_file()]
    if missing:
        raise ConfigError(f"config '{missing[0]}' does not exist")
    grid = [parse_grid(g) for g in ns.grid]
    keys = [k for k, _ in grid]
    for i, key in enumerate(keys):
        same = [k for k in keys[:i] if canonical(k) == canonical(key)]
        if same:
            raise ConfigError(f"--grid key '{key}' is given twice; list its values once")
    try:
        fit_args = shlex.split(ns.fit_args)
    except ValueError as err:
        raise ConfigError(f"--fit_args: cannot split '{ns.fit_args}': {err}") from None
    _check_fit_args(fit_args, keys)
    slurm = {k: getattr(ns, k) for k in _SLURM_OPTIONS if getattr(ns, k) is not None}
    if ns.launcher != "slurm" and (slurm or ns.sbatch_line):
        given = next(iter(slurm), "sbatch_line")
        raise ConfigError(f"--{given} is a SLURM option; add --launcher slurm")
    slurm |= {"signal_lead_s": ns.signal_lead_s, "sbatch_lines": list(ns.sbatch_line)}
    name = ns.name or f"{Path(ns.config[0]).stem}_sweep"
    if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name):
        raise ConfigError(f"--name '{name}': use letters, digits and _.=+- only")
    return SweepArgs(
        configs=list(ns.config),
        grid=grid,
        seeds=_seeds(ns.seeds),
        name=name,
        root=ns.root,
        launcher=ns.launcher,
        dry_run=ns.dry_run,
        force=ns.force,
        fit_args=fit_args,
        metrics=metric_list(ns.metrics),
        slurm=slurm,
    )
