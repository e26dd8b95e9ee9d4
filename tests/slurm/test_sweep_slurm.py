"""Against a real one-node SLURM cluster (conftest.py): requeue, a 2x2 sweep as one array job."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_pref.commands.sweep.summary import write_summary

ROOT = Path(__file__).parents[2]
TINY = "tests/configs/tiny_dpo.yaml"
BETA = "model.init_args.objective.init_args.beta"
FAST_FIT = (
    "--trainer.max_steps 4 --trainer.val_check_interval 2 --trainer.limit_val_batches 1 "
    "--trainer.num_sanity_val_steps 0 --trainer.enable_progress_bar false"
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("slurm_cluster")


def sh(*command: str, timeout: float = 30) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def queued(job: str) -> list[str]:
    """``<id>_<task> <state>`` of the job's array tasks still in the queue."""
    return sh("squeue", "-h", "-r", "-j", job, "-o", "%i %T").split("\n")[:-1]


def wait_until_gone(job: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while queued(job):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} still queued after {timeout} s: {queued(job)}")
        time.sleep(2)


def records(job: str) -> dict[str, dict[str, str]]:
    """``scontrol show job`` of each array task (kept MinJobAge after it ends), by task id."""
    out = sh("scontrol", "show", "job", "-o", job)
    fields = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]
    return {f["ArrayTaskId"]: f for f in fields}


def test_cluster_script_is_idempotent():
    started = subprocess.run(
        ["bash", str(ROOT / "tests/slurm/local_cluster.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0 and "already running" in started.stdout
    assert re.search(r"debug\*\s+up.*(idle|mixed|alloc)", sh("sinfo"))


@pytest.mark.slow  # the preemption test below requeues a real run end to end
def test_a_requeued_array_task_runs_again(tmp_path):
    script = tmp_path / "requeue.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --requeue\n#SBATCH --open-mode=append\n"
        f"#SBATCH --output={tmp_path}/%a.out\n"
        'echo "start ${SLURM_RESTART_COUNT:-0}"\nexec srun sleep 6\n'
    )
    job = sh("sbatch", "--parsable", str(script)).strip().split(";")[0]
    deadline = time.monotonic() + 60
    while f"{job}_0 RUNNING" not in queued(job):
        assert time.monotonic() < deadline, queued(job)
        time.sleep(0.5)
    sh("scontrol", "requeue", f"{job}_0")
    deadline = time.monotonic() + 30
    while records(job)["0"]["JobState"] != "PENDING":  # COMPLETING first, briefly
        assert time.monotonic() < deadline, records(job)["0"]
        time.sleep(0.5)
    wait_until_gone(job, timeout=120)
    assert (tmp_path / "0.out").read_text().count("start") == 2
    assert "start 1" in (tmp_path / "0.out").read_text()
    assert (tmp_path / "1.out").read_text().count("start") == 1
    tasks = records(job)
    assert tasks["0"]["Restarts"] == "1" and tasks["0"]["JobState"] == "COMPLETED"


def submit_sweep(tmp_path, name, *extra, env=ENV):
    command = [sys.executable, "-m", "lightning_pref", "sweep", "--config", TINY]
    command += ["--root", str(tmp_path), "--name", name, "--launcher", "slurm", *extra]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"submitted array job (\d+): (\d+) tasks", result.stdout)
    assert match, result.stdout
    return match.group(1), int(match.group(2))


def test_2x2_sweep_is_one_array_job_and_every_run_finishes(tmp_path):
    start = time.monotonic()
    job, count = submit_sweep(
        tmp_path,
        "slurm2x2",
        *("--grid", f"{BETA}=2000,5000", "--seeds", "0,1", "--cpus_per_task", "1"),
        *("--fit_args", FAST_FIT),
    )
    assert count == 4
    assert {line.split()[0] for line in queued(job)} == {f"{job}_{i}" for i in range(4)}
    wait_until_gone(job, timeout=300)
    tasks = records(job)
    assert sorted(tasks) == ["0", "1", "2", "3"]
    assert {t["ArrayJobId"] for t in tasks.values()} == {job}
    assert all((t["JobState"], t["ExitCode"]) == ("COMPLETED", "0:0") for t in tasks.values())
    sweep_dir = tmp_path / "slurm2x2"
    outs = sorted(p.name for p in (sweep_dir / "slurm").glob("*.out"))
    assert outs == [f"{job}_{i}.out" for i in range(4)]
    assert (
        "`Trainer.fit` stopped: `max_steps=4` reached."
        in (sweep_dir / "slurm" / f"{job}_3.out").read_text()
    )
    summary = write_summary(sweep_dir)
    names = [f"beta={b}_seed={s}" for b in (2000, 5000) for s in (0, 1)]
    assert [r["name"] for r in summary["runs"]] == names
    for run in summary["runs"]:
        expected = "finished" if run["source"] == "metrics.json" else "unknown"
        assert (run["status"], run["global_step"], run["max_steps"]) == (expected, 4, 4)
        assert {"val/loss", "train/loss"} <= set(run["metrics"])
    assert "| beta=5000_seed=1 | 5000 | 1 |" in (sweep_dir / "summary.md").read_text()
    print(f"2x2 SLURM sweep: {time.monotonic() - start:.0f} s from submit to summary")


def test_a_preempted_sweep_task_is_requeued_and_resumes(tmp_path):
    """USR1 to a running task, halfway through optimizer step 13: the run finishes that step,
    saves, requeues its own task and exits; the requeued task resumes from the checkpoint and ends
    with exactly the weights of an uninterrupted local run."""
    ready = tmp_path / "ready"
    pause = json.dumps(
        {
            "class_path": "resume_helpers.PauseForSignal",
            "init_args": {"step": 12, "ready_file": str(ready)},
        },
        separators=(",", ":"),  # no spaces: --fit_args is split like a shell line
    )
    fit = FAST_FIT.replace("max_steps 4", "max_steps 24").replace("interval 2", "interval 8")
    env = {**ENV, "PYTHONPATH": str(ROOT / "tests" / "resume")}
    job, count = submit_sweep(
        tmp_path,
        "preempt",
        "--fit_args",
        f"{fit} {shlex.quote('--trainer.callbacks+=' + pause)}",
        env=env,
    )
    assert count == 1
    deadline = time.monotonic() + 180
    while not ready.exists():
        assert time.monotonic() < deadline, f"the run never reached step 12: {queued(job)}"
        time.sleep(0.5)
    sh("scancel", "--signal=USR1", f"{job}_0")
    wait_until_gone(job, timeout=300)
    out = (tmp_path / "preempt" / "slurm" / f"{job}_0.out").read_text()
    assert "preempted: stopped by SIGUSR1 after step 13" in out and "the job was requeued" in out
    assert "restart 1" in out and "--ckpt_path last: resuming from" in out
    run = tmp_path / "preempt" / "seed=0" / "version_0"
    record = json.loads((run / "metrics.json").read_text())
    assert (record["status"], record["global_step"]) == ("finished", 24)
    assert records(job)["0"]["Restarts"] == "1"

    straight = [sys.executable, "-m", "lightning_pref", "fit", "--config", TINY, *fit.split()]
    straight += ["--trainer.logger.init_args.save_dir", str(tmp_path / "straight")]
    subprocess.run(straight, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ckpt = next((tmp_path / "straight").rglob("last.ckpt"))
    for name, value in torch.load(ckpt, weights_only=True)["state_dict"].items():
        assert torch.equal(value, resumed[name]), name
