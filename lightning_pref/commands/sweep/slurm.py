"""``sweep --launcher slurm``: one SLURM array job, one array task per run.

The script, ``<sweep>/slurm/sweep.sbatch``, picks its run by ``$SLURM_ARRAY_TASK_ID`` (a bash
``case``), changes to the directory the sweep was started in and runs ``exec srun`` with the
run's ``fit`` command and this interpreter (by absolute path, so the same virtual environment).
``exec`` leaves no shell between SLURM and the run: the task's exit code is the run's, and
``--signal=USR1@LEAD`` reaches it ``LEAD`` seconds before the time limit. The run answers USR1
(or SIGTERM) by saving a checkpoint at the next step and requeueing its task
(:mod:`lightning_pref.callbacks.preemption`; ``--requeue``); the task starts the same command
again, ``--ckpt_path last`` resumes it, and it appends to the same ``slurm/<job>_<task>.out``
(``--open-mode=append``).

Array indices count the runs submitted this time: finished runs are left out (module
:mod:`lightning_pref.commands.sweep.run`), so index ``i`` is the ``i``-th unfinished run.
``sweep.json``
records each submission's job id and its runs in index order.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from typing import TYPE_CHECKING, Any

from lightning_pref.errors import ConfigError

if TYPE_CHECKING:
    from lightning_pref.commands.sweep.plan import Run, Sweep

__all__ = ["launch_slurm", "sbatch_script"]


def _directives(sweep: Sweep, count: int) -> list[str]:
    opts: dict[str, Any] = sweep.args.slurm
    array = f"0-{count - 1}" + (f"%{opts['max_parallel']}" if opts.get("max_parallel") else "")
    out = sweep.workdir / sweep.dir / "slurm"
    lines = [
        f"--job-name={sweep.name}",
        f"--array={array}",
        f"--output={out}/%A_%a.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=USR1@{opts.get('signal_lead_s', 90)}",
    ]
    for key, flag in (("partition", "partition"), ("time", "time"), ("nodes", "nodes")):
        if opts.get(key) is not None:
            lines.append(f"--{flag}={opts[key]}")
    if opts.get("gpus_per_node"):  # one task per GPU, as Lightning's SLURMEnvironment expects
        lines += [f"--gpus-per-node={opts['gpus_per_node']}"]
        lines += [f"--ntasks-per-node={opts['gpus_per_node']}"]
    for key, flag in (("cpus_per_task", "cpus-per-task"), ("mem", "mem")):
        if opts.get(key) is not None:
            lines.append(f"--{flag}={opts[key]}")
    return [f"#SBATCH {line}" for line in lines] + [
        line if line.startswith("#SBATCH") else f"#SBATCH {line}"
        for line in opts.get("sbatch_lines", [])
    ]


def _case(index: int, run: Run) -> list[str]:
    """One ``case`` branch: the run's name and its command, one option and value per line."""
    groups: list[list[str]] = [[]]
    for word in (shlex.quote(w) for w in run.command):
        if word.startswith("--") and groups[-1]:
            groups.append([])
        groups[-1].append(word)
    body = ["    CMD=(" + " ".join(groups[0])] + ["         " + " ".join(g) for g in groups[1:]]
    body[-1] += ")"
    return [f"  {index})", f"    RUN={shlex.quote(run.name)}", *body, "    ;;"]


def sbatch_script(sweep: Sweep, runs: list[Run]) -> str:
    """The array job's script: SBATCH lines, then the run of ``$SLURM_ARRAY_TASK_ID``."""
    header = [
        "#!/bin/bash",
        f"# Sweep {sweep.name}: {len(runs)} runs, one SLURM array task each.",
        f"# Written by `python -m lightning_pref sweep` on {time.strftime('%F %T')}.",
        f"# The plan (runs, commands): {sweep.workdir / sweep.dir / 'sweep.json'}",
        "# Each task writes to slurm/<job>_<task>.out and its run to <run>/version_0/.",
        f"# Summary: python -m lightning_pref sweep --summary {sweep.dir}",
    ]
    cases = [line for index, run in enumerate(runs) for line in _case(index, run)]
    body = [
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(sweep.workdir))}",
        "# one BLAS/OpenMP thread per CPU SLURM gives the task, unless the caller chose",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        "# srun reads --cpus-per-task from here since SLURM 22.05, not from the job",
        'if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then',
        '    export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"',
        "fi",
        "",
        'case "${SLURM_ARRAY_TASK_ID:?run this script with sbatch (an array job)}" in',
        *cases,
        "  *)",
        '    echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2',
        "    exit 2",
        "    ;;",
        "esac",
        "",
        'echo "sweep ' + sweep.name + ": array task $SLURM_ARRAY_TASK_ID is run $RUN (job"
        " ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID}, restart ${SLURM_RESTART_COUNT:-0},"
        ' $(hostname), $(date +%FT%T))"',
        "# exec: no shell in between, so USR1 and the exit code are the run's",
        'exec srun "${CMD[@]}"',
    ]
    return "\n".join([*header, *_directives(sweep, len(runs)), *body]) + "\n"


def _record_submission(sweep: Sweep, job_id: str, runs: list[Run]) -> None:
    path = sweep.dir / "sweep.json"
    plan = json.loads(path.read_text())
    submission = {"job_id": job_id, "submitted": time.strftime("%F %T")}
    plan.setdefault("submissions", []).append({**submission, "runs": [r.name for r in runs]})
    path.write_text(json.dumps(plan, indent=2) + "\n")


def launch_slurm(sweep: Sweep, runs: list[Run]) -> str | None:
    """Write the script and submit it with ``sbatch --parsable`` (not with ``--dry_run``).

    Returns:
        The array job's id, or None when nothing was submitted.
    """
    script_path = sweep.dir / "slurm" / "sweep.sbatch"
    if not runs:
        print("nothing to submit: every run has finished (--force reruns them)")
        return None
    script = sbatch_script(sweep, runs)
    script_path.parent.mkdir(parents=True, exist_ok=True)  # SLURM does not create it
    script_path.write_text(script)
    if sweep.args.dry_run:
        print(f"\n{script}\ndry run: wrote {script_path}; submitted nothing")
        return None
    result = subprocess.run(
        ["sbatch", "--parsable", str(script_path)],
        cwd=sweep.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"sbatch failed: {message[-1] if message else result.returncode}")
    job_id = result.stdout.strip().split(";")[0]
    _record_submission(sweep, job_id, runs)
    out = sweep.dir / "slurm"
    print(
        f"submitted array job {job_id}: {len(runs)} tasks ({script_path})\n"
        f"  queue:   squeue -r -j {job_id}\n"
        f"  logs:    {out}/{job_id}_<task>.out (task i = i-th run above)\n"
        f"  runs:    {sweep.dir}/<run>/version_0\n"
        f"  summary: python -m lightning_pref sweep --summary {sweep.dir}"
    )
    return job_id
