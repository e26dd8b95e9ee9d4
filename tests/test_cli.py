import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_pref.__main__ import main

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny_dpo.yaml")


def scalar_tags(log_root: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for event_file in log_root.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_tiny_fit_logs_tensorboard_scalars(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(
        [
            "fit",
            "--config",
            TINY,
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    tags = scalar_tags(tmp_path)
    assert {
        "train/loss",
        "train/implicit_acc",
        "train/model_mse_w",
        "train/ref_mse_l",
        "train/lr",
        "val/loss",
        "val/implicit_acc",
    } <= tags
    version = next((tmp_path / "tiny_dpo").iterdir())
    assert (version / "config.yaml").exists()
    assert (version / "checkpoints" / "last.ckpt").exists()


def test_print_config_shows_official_dpo_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "experiments" / "dpo_sd15.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    init = cfg["model"]["init_args"]
    assert init["objective"]["init_args"]["beta"] == 5000.0
    assert init["optimizer"]["init_args"]["lr"] == 2.048e-5
    assert init["optimizer"]["init_args"]["weight_decay"] == 1.0e-2
    assert init["lr_scheduler"]["init_args"]["warmup_steps"] == 500
    assert cfg["trainer"]["accumulate_grad_batches"] == 128
    assert cfg["trainer"]["devices"] * cfg["trainer"]["num_nodes"] == 16
    assert cfg["trainer"]["max_steps"] == 2000
    assert cfg["trainer"]["gradient_clip_val"] == 1.0
    assert cfg["data"]["init_args"]["proportion_empty_prompts"] == 0.2
    assert cfg["data"]["init_args"]["resolution"] == 512


def test_offline_fit_on_sd15_fails_fast_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_pref",
            "fit",
            "--config",
            str(ROOT / "experiments" / "dpo_sd15.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    assert "--model.init_args.policy.init_args.pretrained DIR" in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert elapsed < 60


def test_unknown_config_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load(Path(TINY).read_text())
    cfg["model"]["init_args"]["objective"]["init_args"]["betta"] = 1.0
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "betta" in err


def test_fit_through_the_sd_folder_loader(tmp_path, monkeypatch):
    """The loading code used for SD1.5, on a tiny pipeline saved in the same layout."""
    from lightning_pref.models import save_tiny_pipeline

    model_dir = save_tiny_pipeline(tmp_path / "tiny_sd", seed=1)
    monkeypatch.chdir(ROOT)
    main(
        [
            "fit",
            "--config",
            TINY,
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--model.init_args.policy",
            "lightning_pref.models.DiffusionPolicy",
            "--model.init_args.policy.init_args.pretrained",
            str(model_dir),
            "--model.init_args.policy.init_args.lora_rank",
            "4",
        ]
    )
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    import torch

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
    assert state_is_trained(state)


def state_is_trained(state) -> bool:
    # gaussian-initialised lora_A is random; lora_B starts at zero and must have moved
    return any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def test_nan_loss_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                TINY,
                "--trainer.max_steps",
                "3",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
                "--model.init_args.optimizer.init_args.lr",
                "1.0e30",
                "--model.init_args.lr_scheduler",
                "null",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: non-finite loss" in err


def test_seed_everything_reaches_the_module_and_the_data(tmp_path, monkeypatch):
    """tiny_dpo.yaml sets no seed on the model or the data (``seed: None``): both follow
    ``--seed_everything``, so seeds 0 and 1 train on other noise and pair orders, and the same seed
    reproduces the run."""
    monkeypatch.chdir(ROOT)

    def final_loss(seed: int, name: str) -> float:
        from lightning_pref.callbacks.run_summary import read_run_summary

        main(
            [
                "fit", "--config", TINY, "--trainer.max_steps", "3", f"--seed_everything={seed}",
                "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.save_dir",
                str(tmp_path), "--trainer.logger.init_args.name", name,
            ]
        )  # fmt: skip
        return read_run_summary(tmp_path / name / "version_0")["metrics"]["train/loss"]

    first, again, other = final_loss(0, "a"), final_loss(0, "b"), final_loss(1, "c")
    assert first == again
    assert first != other
