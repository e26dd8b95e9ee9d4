"""The offline family from YAML: a noising strategy overlay and the KTO module, through the CLI."""

from pathlib import Path

import torch

from lightning_pref.__main__ import main

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny_dpo.yaml")


def _fit(tmp_path: Path, overlay: str, name: str) -> Path:
    extra = tmp_path / "overlay.yaml"
    extra.write_text(overlay)
    main(
        [
            "fit",
            "--config",
            TINY,
            "--config",
            str(extra),
            "--trainer.max_steps",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.name",
            name,
        ]
    )
    return next((tmp_path / name).iterdir()) / "checkpoints" / "last.ckpt"


def test_dpo_with_renoise_inversion_from_yaml(tmp_path, monkeypatch):
    """The README's overlay: any objective with any noising strategy; the checkpoint stays loadable
    with weights_only (the strategy is not pickled into the hyperparameters)."""
    monkeypatch.chdir(ROOT)
    ckpt = _fit(
        tmp_path,
        "model:\n  init_args:\n    noising:\n"
        "      class_path: lightning_pref.models.noising.ReNoiseInversion\n"
        "      init_args: {num_steps: 5}\n",
        "renoise_dpo",
    )
    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 2
    assert "noising" not in checkpoint.get("hyper_parameters", {})
    config = (ckpt.parents[1] / "config.yaml").read_text()
    assert "lightning_pref.models.noising.ReNoiseInversion" in config


def test_kto_module_from_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ckpt = _fit(
        tmp_path,
        "model:\n  class_path: lightning_pref.modules.UnpairedModule\n  init_args:\n"
        "    objective: {class_path: lightning_pref.objectives.DiffusionKTO}\n"
        "    positive_fraction: 0.8\n",
        "kto",
    )
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == 2
