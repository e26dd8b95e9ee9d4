"""Every shipped config parses and resolves (nothing is loaded)."""

from pathlib import Path

import pytest
import yaml

from lightning_pref.__main__ import main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "configs").glob("*.yaml")
)
OVERLAYS = sorted((ROOT / "experiments" / "strategies").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _test_helpers_importable(monkeypatch):
    """tests/configs/tiny_spo.yaml names a scorer from tests/resume/resume_helpers.py."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "resume"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"].startswith("lightning_pref.")
    assert cfg["data"]["class_path"].startswith("lightning_pref.")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_strategy_overlay_parses_on_top_of_a_config(overlay, capsys):
    with pytest.raises(SystemExit) as exit_info:
        base = str(ROOT / "experiments" / "dpo_sd15.yaml")
        main(["fit", "--config", base, "--config", str(overlay), "--print_config"])
    assert exit_info.value.code in (0, None)
    strategy = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    expected = yaml.safe_load(overlay.read_text())["trainer"]["strategy"]
    assert strategy["class_path"] == expected["class_path"]
    for key, value in expected["init_args"].items():
        assert strategy["init_args"][key] == value, key


@pytest.mark.parametrize("config", CONFIGS + OVERLAYS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_has_header_comment(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# "), "each config starts with a comment: what, source, hardware, run"
    assert "Run:" in config.read_text()


@pytest.mark.parametrize("backbone", ["sd15", "sdxl"])
@pytest.mark.parametrize("method", ["dpo", "spo", "tailorpo", "smpo"])
def test_each_method_ships_sd15_and_sdxl_configs(method, backbone, capsys):
    """The official-recipe configs exist for both backbones and point at the right base model."""
    config = ROOT / "experiments" / f"{method}_{backbone}.yaml"
    assert config.is_file(), f"missing {config.name}"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    policy = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["policy"]
    pretrained = policy["init_args"]["pretrained"]
    assert ("xl" in pretrained) == (backbone == "sdxl"), pretrained
