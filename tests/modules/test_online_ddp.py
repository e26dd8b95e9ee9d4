"""On-policy training under DDP with 2 CPU processes (gloo), in a subprocess with a timeout."""

import subprocess
import sys
from pathlib import Path

import torch


def test_step_pools_train_under_ddp_with_two_processes(tmp_path):
    script = Path(__file__).with_name("ddp_step_pool_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 6
    # each rank generated its own share of the prompts
    assert r0["prompts"] and r1["prompts"]
    assert not set(r0["prompts"]) & set(r1["prompts"][: len(r0["prompts"])][:2])
    # gradients were averaged: the replicas stay identical, and they moved
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
