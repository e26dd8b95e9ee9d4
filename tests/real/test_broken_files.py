"""Broken files get one line each (issue: "meet what users really have"), through the CLI.

A Git LFS pointer in place of weights, the 2-byte "safetensors" file, a truncated or random
checkpoint given to ``fit``, ``evaluate`` or ``export``, a configuration error Lightning raises
after parsing: each ends with exit status 2, one ``error:`` line and no traceback. ``fit
--ckpt_path last`` skips an unreadable newest checkpoint and resumes from the newest readable one.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from lightning_pref.__main__ import main
from lightning_pref.errors import ModelLoadError
from lightning_pref.models import DiffusionPolicy
from lightning_pref.models.files import (
    check_checkpoint_file,
    check_weights_file,
    check_weights_folder,
)
from lightning_pref.models.tiny import save_tiny_pipeline
from lightning_pref.scoring.clip import load_weights_file
from lightning_pref.training.resume import find_last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EDGE = "edge_cases"
POINTER = "lfs_pointer_sd15_unet_diffusion_pytorch_model.safetensors"
TWO_BYTES = "empty_2byte_pytorch_lora_weights.safetensors"


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and exactly one ``error:`` line on stderr; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fit_tiny) -> Path:
    """A 2-step tiny DPO run (its version folder)."""
    return fit_tiny("tiny_dpo.yaml", tmp_path_factory.mktemp("runs"))


def broken_copies(ckpt: Path, folder: Path) -> dict[str, Path]:
    """A truncated copy (half the bytes) and a file of random bytes, both named ``*.ckpt``."""
    data = ckpt.read_bytes()
    truncated, random = folder / "truncated.ckpt", folder / "random.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    random.write_bytes(os.urandom(4096))
    return {"truncated": truncated, "random": random}


# ------------------------------------------------------------------ weight files


def test_lfs_pointer_and_two_byte_file_are_named_with_the_fix(realfiles):
    pointer, two_bytes = realfiles / EDGE / POINTER, realfiles / EDGE / TWO_BYTES
    with pytest.raises(ModelLoadError, match=r"Git LFS pointer \(135 bytes\).*git lfs pull"):
        check_weights_file(pointer)
    with pytest.raises(ModelLoadError, match=r"not a safetensors file \(2 bytes"):
        check_weights_file(two_bytes)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_weights_file(two_bytes)  # the scorers' weights reader
    with pytest.raises(ModelLoadError, match="Git LFS pointer"):
        check_weights_file(realfiles / EDGE / "lfs_pointer_hpsv2_test.csv")


def test_model_folder_with_an_lfs_pointer_for_the_unet(realfiles, tmp_path):
    """The SD layout of a clone without Git LFS: the loader names the file and `git lfs pull`."""
    folder = save_tiny_pipeline(tmp_path / "sd", seed=0)
    DiffusionPolicy(pretrained=str(folder)).build()  # the intact folder loads
    shutil.copy(realfiles / EDGE / POINTER, folder / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="unet/diffusion_pytorch_model.safetensors.*git lfs"):
        DiffusionPolicy(pretrained=str(folder)).build()
    check_weights_folder(tmp_path / "nothing here")  # no weights files: nothing to say


def test_fit_on_a_folder_with_an_lfs_pointer_is_one_line(realfiles, tmp_path, capsys):
    folder = save_tiny_pipeline(tmp_path / "sd", seed=0)
    shutil.copy(realfiles / EDGE / POINTER, folder / "unet" / "diffusion_pytorch_model.safetensors")
    policy = "--model.init_args.policy"
    line = one_error_line(capsys, [
        "fit", "--config", str(ROOT / "tests/configs/tiny_dpo.yaml"),
        f"{policy}=lightning_pref.models.DiffusionPolicy",
        f"{policy}.init_args.pretrained={folder}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ])  # fmt: skip
    assert "Git LFS pointer" in line and "git lfs pull" in line


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_broken_checkpoint_to_fit_evaluate_and_export_is_one_line(
    kind, tiny_run, tmp_path, capsys, monkeypatch
):
    checkpoints = tiny_run / "checkpoints"  # next to the run's config.yaml, as a user has them
    ckpt = broken_copies(checkpoints / "last.ckpt", checkpoints)[kind]
    with pytest.raises(ModelLoadError, match="truncated or not a checkpoint"):
        check_checkpoint_file(ckpt)
    monkeypatch.chdir(ROOT)
    fit = ["fit", "--config", "tests/configs/tiny_dpo.yaml", "--ckpt_path", str(ckpt)]
    fit += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    assert "truncated or not a checkpoint" in one_error_line(capsys, fit)
    run = ["evaluate", "--run", str(ckpt), "--num_samples", "2"]
    assert "truncated or not a checkpoint" in one_error_line(capsys, run)
    export = ["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "out")]
    assert "truncated or not a checkpoint" in one_error_line(capsys, export)


def test_ckpt_path_last_skips_an_unreadable_newest_checkpoint(tmp_path, fit_tiny, capsys):
    """The newest checkpoint (last.ckpt) is torn; the step checkpoint beside it is readable: the
    run resumes from that one, says which, names the skipped file, and finishes."""
    save_dir = tmp_path / "runs"
    version = fit_tiny("tiny_dpo.yaml", save_dir)
    last = version / "checkpoints" / "last.ckpt"
    (older,) = [p for p in (version / "checkpoints").glob("*.ckpt") if p != last]
    os.utime(older, (1_000_000_000, 1_000_000_000))
    last.write_bytes(last.read_bytes()[:1000])  # a save cut short
    capsys.readouterr()
    resumed = fit_tiny("tiny_dpo.yaml", save_dir, "--ckpt_path=last", max_steps=3)
    out = capsys.readouterr().out
    assert f"skipping checkpoint '{last}'" in out
    assert f"resuming from {older}" in out
    assert resumed == version  # logged into the same version folder
    found, _ = find_last_checkpoint(save_dir / "tiny_dpo", None)  # the next resume's choice
    assert torch.load(found, weights_only=True)["global_step"] == 3  # nothing lost


# ------------------------------------------------------------------ after parsing


def test_lightning_configuration_error_after_parsing_is_one_line(tmp_path, capsys, monkeypatch):
    """``val_check_interval`` above the number of training batches (14): Lightning raises it in
    ``fit``, after the config parsed; the CLI prints Lightning's own sentence as one line."""
    monkeypatch.chdir(ROOT)
    line = one_error_line(capsys, [
        "fit", "--config", "tests/configs/tiny_dpo.yaml", "--trainer.val_check_interval", "10000",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ])  # fmt: skip
    assert "`val_check_interval` (10000) must be less than or equal" in line
