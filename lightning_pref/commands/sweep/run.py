"""``python -m lightning_pref sweep``: a grid of ``fit`` runs × seeds, run locally or on SLURM.

The runs are the cartesian product of every ``--grid KEY=V1,V2`` and ``--seeds``, in that order
(the last grid key varies fastest, the seed fastest of all). A run is named after its values:
the last segment of each key that is not ``init_args`` (more segments when two keys would share
a name) ``=`` its value (a dotted class path gives its class name), joined by ``_``, seed last:
``beta=2000_seed=0``. Characters other than ``A-Za-z0-9._+-`` become ``-``. A value may not
contain a comma outside brackets (``--grid 'k=[1,2],[3,4]'`` has two values).

The sweep is named ``<stem of the first config>_sweep`` unless ``--name`` says otherwise, and
lives in ``ROOT/NAME`` (``--root``, default ``runs``):

- ``sweep.json``: the plan: configs, grid, seeds, each run's name, values and command line;
- ``<run>/version_0/``: the run (TensorBoard logs, ``config.yaml``, checkpoints, ``metrics.json``);
- ``<run>/fit.log`` and ``<run>/launch.json`` (exit code, seconds) with ``--launcher local``;
- ``slurm/sweep.sbatch`` and ``slurm/<job>_<task>.out`` with ``--launcher slurm``
  (:mod:`lightning_pref.commands.sweep.slurm`);
- ``summary.md`` and ``summary.json`` (:mod:`lightning_pref.commands.sweep.summary`).

Each run is one ``fit`` command, run from the directory the sweep was started in::

    python -m lightning_pref fit --config X.yaml [--config ...] --seed_everything S
        --trainer.logger.class_path lightning.pytorch.loggers.TensorBoardLogger
        --trainer.logger.init_args.save_dir ROOT/NAME --trainer.logger.init_args.name RUN
        --trainer.logger.init_args.version 0 --ckpt_path last --KEY VALUE ... [--fit_args]

``--ckpt_path last`` resumes a run from the newest checkpoint in its ``version_0`` (a rerun
sweep, a requeued SLURM task) and starts it fresh when there is none. Before anything runs, each
grid point's command is parsed once in ``--print_config`` mode, so a misspelt key or a bad value
is named at once. A run that finished (``metrics.json`` says so or, without one, its local launch
exited 0) is skipped unless ``--force``, which deletes the run's folder and runs it afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import subprocess
import time
import warnings
from pathlib import Path

from lightning_pref.commands.sweep.args import metric_list, parse_args, parser
from lightning_pref.commands.sweep.plan import Run, Sweep, make_sweep
from lightning_pref.commands.sweep.summary import is_finished, write_summary
from lightning_pref.errors import ConfigError

__all__ = ["launch_local", "main", "runs_to_launch", "validate", "write_plan"]


def validate(sweep: Sweep) -> None:
    """Parse each grid point's command in ``--print_config`` mode; raise on the first error."""
    from lightning_pref.cli import PreferenceCLI, condense_parse_error
    from lightning_pref.errors import user_error

    checked: set[tuple[tuple[str, str], ...]] = set()
    for run in sweep.runs:
        point = tuple(run.values.items())
        if point in checked:
            continue
        checked.add(point)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
                PreferenceCLI(args=[*run.command[3:], "--print_config"])  # from 'fit' on
        except SystemExit as err:
            if err.code not in (0, None):
                raise ConfigError(f"run {run.name}: the fit arguments do not parse") from None
        except argparse.ArgumentError as err:
            raise ConfigError(f"run {run.name}: {condense_parse_error(str(err))}") from None
        except Exception as err:
            error = user_error(err)
            if error is None:
                raise
            raise ConfigError(f"run {run.name}: {error}") from None


def write_plan(sweep: Sweep) -> Path:
    """Write ``sweep.json``; a sweep folder of other configs is not reused."""
    path = sweep.dir / "sweep.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("configs") != sweep.args.configs:
            raise ConfigError(
                f"'{sweep.dir}' holds a sweep of {old.get('configs')}; pass another --name"
            )
    sweep.dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
    return path


def runs_to_launch(sweep: Sweep, force: bool, delete: bool = True) -> list[Run]:
    """Runs that have not finished; with ``force`` all, their folders deleted (if ``delete``)."""
    if force:
        for run in sweep.runs if delete else ():
            shutil.rmtree(sweep.run_dir(run), ignore_errors=True)
        return list(sweep.runs)
    return [r for r in sweep.runs if not is_finished(sweep.run_dir(r))]


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def launch_local(sweep: Sweep, runs: list[Run]) -> dict[str, int]:
    """Run each fit in a subprocess, one after another; a failure does not stop the others.

    Returns:
        The exit code of each run, by name; also written to ``<run>/launch.json``.
    """
    codes: dict[str, int] = {}
    for index, run in enumerate(runs, 1):
        run_dir = sweep.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "fit.log"
        print(f"[{index}/{len(runs)}] {run.name}: started (log {log})", flush=True)
        start = time.perf_counter()
        with log.open("a") as stream:
            stream.write(f"\n# {time.strftime('%F %T')} {shlex.join(run.command)}\n")
            stream.flush()
            code = subprocess.run(
                run.command, cwd=sweep.workdir, stdout=stream, stderr=subprocess.STDOUT
            ).returncode
        seconds = time.perf_counter() - start
        launch = {"exit_code": code, "seconds": round(seconds, 1), "command": run.command}
        (run_dir / "launch.json").write_text(json.dumps(launch, indent=2) + "\n")
        codes[run.name] = code
        outcome = "done" if code == 0 else f"FAILED (exit code {code}); end of {log}:\n{_tail(log)}"
        print(f"[{index}/{len(runs)}] {run.name}: {outcome} ({seconds:.0f} s)", flush=True)
    return codes


def print_runs(sweep: Sweep, runs: list[Run]) -> None:
    """The runs to launch, by name, with their command lines."""
    skipped = len(sweep.runs) - len(runs)
    note = f", {skipped} finished and skipped (--force reruns them)" if skipped else ""
    print(f"sweep {sweep.name}: {len(runs)} runs in {sweep.dir}{note}")
    for run in runs:
        print(f"  {run.name}\n    {shlex.join(run.command)}")


def main(argv: list[str]) -> None:
    """``python -m lightning_pref sweep``: plan, check, launch and summarize a sweep.

    Args:
        argv: the arguments after ``sweep`` (see ``--help``).

    Raises:
        SystemExit: with code 1 if a local run failed.
        ConfigError: for bad arguments, a fit argument that does not parse, a failed sbatch.
    """
    if any(a == "--summary" or a.startswith("--summary=") for a in argv):
        ns = parser().parse_args(argv)  # --summary: no --fit_args to glue
        write_summary(Path(ns.summary), metric_list(ns.metrics))
        return
    args = parse_args(argv)
    sweep = make_sweep(args)
    if args.launcher == "slurm" and not args.dry_run and shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm needs sbatch on PATH: install SLURM (README, 'Sweeps'; "
            "tests/slurm/local_cluster.sh start sets up a one-node cluster here)"
        )
    validate(sweep)
    if not args.dry_run:
        write_plan(sweep)
    runs = runs_to_launch(sweep, args.force, delete=not args.dry_run)
    print_runs(sweep, runs)
    if args.launcher == "slurm":
        from lightning_pref.commands.sweep.slurm import launch_slurm

        launch_slurm(sweep, runs)
        return
    if args.dry_run:
        print("dry run: nothing written, nothing run")
        return
    codes = launch_local(sweep, runs)
    write_summary(sweep.dir, args.metrics)
    failed = [name for name, code in codes.items() if code]
    if failed:
        print(f"{len(failed)} of {len(codes)} runs failed: {', '.join(failed)}")
        raise SystemExit(1)
