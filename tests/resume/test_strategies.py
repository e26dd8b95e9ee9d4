"""The strategy overlays on CPU (2 processes, gloo): DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3 each
train MiniPick DPO (experiments/dpo_minipick.yaml, batches of 8 pairs a rank), checkpoint, and
resume; the resumed run ends with the weights of a straight one.

Each case is two CLI runs: a straight 6-step run that also saves a step-4 checkpoint, and a run
resumed from that checkpoint to step 6. On CPU every strategy resumes to the same weights, bit
for bit (FSDP and ZeRO shard the same fp32 arithmetic over the same 2 ranks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
STRATEGIES = ROOT / "experiments" / "strategies"


def _fit(tmp: Path, name: str, overlay: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "lightning_pref", "fit",
        "--config", str(ROOT / "experiments" / "dpo_minipick.yaml"),
        "--config", str(STRATEGIES / overlay),
        "--data.init_args.batch_size=8",
        "--trainer.devices=2", "--trainer.max_steps=6", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp}", f"--trainer.logger.init_args.name={name}",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _unet_weights(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """The policy UNet's weights from a plain, FSDP-sharded or DeepSpeed checkpoint."""
    if ckpt.is_file():  # DDP: one Lightning checkpoint
        state = torch.load(ckpt, weights_only=True)["state_dict"]
    elif (ckpt / ".metadata").is_file():  # FSDP: a torch.distributed.checkpoint folder
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(ckpt, tmp / "fsdp.pt")
        state = torch.load(tmp / "fsdp.pt", weights_only=True)["model"]
    else:  # DeepSpeed: gather the fp32 weights from the ZeRO partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    return {k[k.index("policy.unet.") :]: v for k, v in state.items() if "policy.unet." in k}


@pytest.mark.minipick
@pytest.mark.parametrize(
    "overlay", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"]
)
def test_strategy_trains_checkpoints_and_resumes(tmp_path, overlay, minipick_assets):
    if overlay.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="pip install -e '.[dev]' installs deepspeed")
    mid = tmp_path / "mid"
    keep_step4 = json.dumps(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(mid), "filename": "step4", "every_n_train_steps": 4},
        }
    )
    _fit(tmp_path, "straight", overlay, f"--trainer.callbacks+={keep_step4}")
    assert (mid / "step4.ckpt").exists()
    resumed = _fit(tmp_path, "resumed", overlay, f"--ckpt_path={mid / 'step4.ckpt'}")
    assert "Restored all states" in resumed.stderr + resumed.stdout

    runs = {name: tmp_path / name / "version_0" for name in ("straight", "resumed")}
    for run in runs.values():
        summary = json.loads((run / "metrics.json").read_text())
        assert (summary["status"], summary["global_step"]) == ("finished", 6)
        assert "val/loss" in summary["metrics"]
    weights = {
        name: _unet_weights(run / "checkpoints" / "last.ckpt", tmp_path / name)
        for name, run in runs.items()
    }
    start = _unet_weights(mid / "step4.ckpt", tmp_path)
    assert len(weights["straight"]) > 0
    assert weights["straight"].keys() == weights["resumed"].keys() == start.keys()
    moved = [k for k, v in start.items() if not torch.equal(v, weights["resumed"][k])]
    assert moved, "the resumed run did not train"
    for key, value in weights["straight"].items():
        assert torch.equal(value, weights["resumed"][key]), key


def test_zero3_with_zero_init_builds_the_reference_under_zero_init(tmp_path):
    """zero_init: true builds the models inside deepspeed.zero.Init, where the policy's weights are
    partitioned as they are created: the frozen reference is then loaded again (load_base_unet)
    rather than deep-copied. Tiny DPO (models built in code), 2 steps."""
    pytest.importorskip("deepspeed", reason="pip install -e '.[dev]' installs deepspeed")
    cmd = [
        sys.executable, "-m", "lightning_pref", "fit",
        "--config", str(ROOT / "tests" / "configs" / "tiny_dpo.yaml"),
        "--config", str(STRATEGIES / "deepspeed_zero3.yaml"),
        "--trainer.strategy.init_args.zero_init=true",
        "--trainer.devices=2", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert (summary["status"], summary["global_step"]) == ("finished", 2)
    assert "val/loss" in summary["metrics"]
