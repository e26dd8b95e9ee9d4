"""experiments/spo_sd15.yaml: official settings, offline failure, and 2 steps on tiny models."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_pref.__main__ import main
from lightning_pref.models import save_tiny_clip, save_tiny_pipeline

ROOT = Path(__file__).parents[1]
SPO_SD15 = str(ROOT / "experiments" / "spo_sd15.yaml")


def test_print_config_shows_official_spo_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SPO_SD15, "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    init = cfg["model"]["init_args"]
    assert init["objective"]["init_args"] == {"beta": 10.0, "clip": 0.1}
    pool = init["pool"]["init_args"]
    assert (pool["num_candidates"], pool["threshold"], pool["num_steps"]) == (4, 0.3, 20)
    assert (pool["guidance_scale"], pool["eta"], pool["max_timestep"]) == (5.0, 1.0, 751)
    assert pool["resample"] == "random"
    policy = init["policy"]["init_args"]
    assert (policy["lora_rank"], policy["lora_alpha"]) == (4, 4.0)
    opt = init["optimizer"]["init_args"]
    assert (opt["lr"], opt["weight_decay"], opt["eps"]) == (6.0e-5, 1.0e-4, 1.0e-8)
    assert init["reference"] == "adapters_off"
    assert init["train_batch_size"] == 10 and init["train_cfg"] is True
    assert cfg["data"]["init_args"]["batch_size"] == 10
    assert cfg["trainer"]["devices"] == 4 and cfg["seed_everything"] == 42


def test_offline_spo_sd15_fails_fast_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_pref", "fit", "--config", SPO_SD15],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60


def test_spo_sd15_trains_two_steps_on_tiny_models(tmp_path, monkeypatch):
    sd = save_tiny_pipeline(tmp_path / "sd", with_vae=True, sample_size=8)
    clip = save_tiny_clip(tmp_path / "clip")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\na cat\n")
    monkeypatch.chdir(tmp_path)
    pool = "--model.init_args.pool.init_args."
    main(
        [
            "fit",
            "--config",
            SPO_SD15,
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.max_steps=2",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--model.init_args.policy.init_args.pretrained={sd}",
            f"{pool}scorer.init_args.pretrained={clip}",
            f"{pool}scorer.init_args.processor_path={clip}",
            f"{pool}num_steps=4",
            f"--data.init_args.train_prompts={prompts}",
            "--data.init_args.batch_size=2",
            "--model.init_args.train_batch_size=2",
        ]
    )
    version = next((tmp_path / "runs" / "spo_sd15").iterdir())
    assert (version / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all("lora" in key for key in ckpt["state_dict"])  # LoRA-only checkpoint
