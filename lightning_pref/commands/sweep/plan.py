"""A sweep's plan: its runs (grid point × seed), their names and their ``fit`` command lines."""

from __future__ import annotations

import itertools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_pref.commands.sweep.args import SweepArgs
from lightning_pref.errors import ConfigError

__all__ = [
    "Run",
    "Sweep",
    "fit_command",
    "make_sweep",
    "python_executable",
    "short_names",
    "value_label",
]

LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"


@dataclass(frozen=True)
class Run:
    """One ``fit`` of the sweep: a grid point and a seed."""

    name: str
    values: dict[str, str]  # grid key -> value, in --grid order
    seed: int
    command: list[str]


@dataclass(frozen=True)
class Sweep:
    """The plan: where the sweep lives and its runs, in order."""

    name: str
    dir: Path  # ROOT/NAME, relative to workdir when ROOT is
    workdir: Path  # absolute: every run starts here
    args: SweepArgs
    runs: list[Run]

    def run_dir(self, run: Run) -> Path:
        """The run's folder (``fit.log``, ``launch.json``, ``version_0/``)."""
        return self.dir / run.name

    def to_json(self) -> dict[str, Any]:
        """The content of ``sweep.json``."""
        return {
            "name": self.name,
            "workdir": str(self.workdir),
            "python": python_executable(),
            "configs": self.args.configs,
            "grid": dict(self.args.grid),
            "seeds": self.args.seeds,
            "fit_args": self.args.fit_args,
            "launcher": self.args.launcher,
            "metrics": self.args.metrics,
            "runs": [
                {"name": r.name, "values": r.values, "seed": r.seed, "command": r.command}
                for r in self.runs
            ],
        }


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's name in run names: its last segment (not ``init_args``); more where they clash."""
    parts = {k: [s for s in k.split(".") if s != "init_args"] or [k] for k in keys}
    length = dict.fromkeys(keys, 1)
    while True:
        names = {k: ".".join(parts[k][-length[k] :]) for k in keys}
        clashing = [k for k in keys if list(names.values()).count(names[k]) > 1]
        longer = [k for k in clashing if length[k] < len(parts[k])]
        if not longer:
            return names  # unique, or as long as they get (make_sweep rejects equal run names)
        for k in longer:
            length[k] += 1


def value_label(value: str) -> str:
    """A value as it appears in a run name: a class path's last part, unsafe characters as -."""
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value):
        value = value.rsplit(".", 1)[1]
    return re.sub(r"[^A-Za-z0-9._+-]", "-", value)


def fit_command(args: SweepArgs, save_dir: Path, name: str, seed: int, values: dict) -> list[str]:
    """The ``fit`` command line of one run (module docstring)."""
    logger = "--trainer.logger"
    command = [python_executable(), "-m", "lightning_pref", "fit"]
    for config in args.configs:
        command += ["--config", config]
    command += ["--seed_everything", str(seed), f"{logger}.class_path", LOGGER]
    command += [f"{logger}.init_args.save_dir", str(save_dir)]
    command += [f"{logger}.init_args.name", name, f"{logger}.init_args.version", "0"]
    command += ["--ckpt_path", "last"]
    for key, value in values.items():
        command += [f"--{key}", value]
    return command + args.fit_args


def make_sweep(args: SweepArgs, workdir: Path | None = None) -> Sweep:
    """Expand the grid × seeds into runs; run names must be unique."""
    save_dir = Path(args.root) / args.name
    labels = short_names([k for k, _ in args.grid])
    runs: list[Run] = []
    for point in itertools.product(*(values for _, values in args.grid)):
        values = dict(zip([k for k, _ in args.grid], point, strict=True))
        parts = [f"{labels[k]}={value_label(v)}" for k, v in values.items()]
        for seed in args.seeds:
            name = "_".join([*parts, f"seed={seed}"])
            runs.append(Run(name, values, seed, fit_command(args, save_dir, name, seed, values)))
    by_name: dict[str, Run] = {}
    for run in runs:
        if run.name in by_name:
            other = by_name[run.name].values
            raise ConfigError(f"grid points {other} and {run.values} both make run '{run.name}'")
        by_name[run.name] = run
    return Sweep(args.name, save_dir, (workdir or Path.cwd()).resolve(), args, runs)


def python_executable() -> str:
    """This interpreter by absolute path, symlinks kept (a venv's python is a link)."""
    return os.path.abspath(sys.executable)
