"""A run killed by a signal mid-step resumes with ``--ckpt_path last`` to the same weights, bit for
bit, as a run that was never interrupted (CLI subprocesses, single process, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
HELPERS = Path(__file__).parent


def _fit_command(config: str, root: Path, name: str, max_steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lightning_pref", "fit", "--config", str(ROOT / config),
        f"--trainer.max_steps={max_steps}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _interrupt(cmd: list[str], cwd: Path, ready: Path, signum: int) -> tuple[int, str]:
    """Start ``cmd``, wait until it pauses mid-step (``ready`` appears), send ``signum``."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, f"run ended before the pause: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "run never reached the pause"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    return proc.returncode, stderr


def _assert_same_training_state(a: Path, b: Path) -> None:
    ckpt_a = torch.load(a, weights_only=True, map_location="cpu")
    ckpt_b = torch.load(b, weights_only=True, map_location="cpu")
    assert ckpt_a["global_step"] == ckpt_b["global_step"]
    assert ckpt_a["state_dict"].keys() == ckpt_b["state_dict"].keys()
    for name, value in ckpt_a["state_dict"].items():
        assert torch.equal(value, ckpt_b["state_dict"][name]), name
    opt_a, opt_b = ckpt_a["optimizer_states"][0], ckpt_b["optimizer_states"][0]
    for idx, entry in opt_a["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, opt_b["state"][idx][key]), (idx, key)


CASES = {
    # config, steps, pause before optimizer step pause+1
    "dpo": ("tests/configs/tiny_dpo.yaml", 16, 5),
    "spo": ("tests/configs/tiny_spo.yaml", 8, 3),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_sigterm_mid_step_then_resume_equals_uninterrupted(tmp_path, method):
    """The DPO run crosses its epoch boundary (12 steps an epoch) after the resume; the SPO run
    resumes mid-round. Checkpoint after the signal = step pause+1; final state is bit-identical."""
    config, steps, pause = CASES[method]
    _run(_fit_command(config, tmp_path, "straight", steps), ROOT)
    ready = tmp_path / "ready"
    callback = json.dumps(
        {
            "class_path": "resume_helpers.PauseForSignal",
            "init_args": {"step": pause, "ready_file": str(ready)},
        }
    )
    cmd = _fit_command(config, tmp_path, "killed", steps, f"--trainer.callbacks+={callback}")
    code, stderr = _interrupt(cmd, ROOT, ready, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert f"preempted: stopped by SIGTERM after step {pause + 1}" in stderr
    run = tmp_path / "killed" / "version_0"
    summary = json.loads((run / "metrics.json").read_text())
    assert (summary["status"], summary["global_step"]) == ("preempted", pause + 1)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == pause + 1

    resumed = _run(_fit_command(config, tmp_path, "killed", steps, "--ckpt_path=last"), ROOT)
    assert "resuming from" in resumed.stdout
    assert not (tmp_path / "killed" / "version_1").exists()  # logs continue in version_0
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    _assert_same_training_state(
        tmp_path / "straight" / "version_0" / "checkpoints" / "last.ckpt",
        run / "checkpoints" / "last.ckpt",
    )
