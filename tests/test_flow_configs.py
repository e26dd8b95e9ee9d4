"""The flow configs fail offline with one line that names the fix (no model hub here)."""

from pathlib import Path

import pytest

from lightning_pref.__main__ import main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*_sd35m.yaml")) + [
    ROOT / "experiments" / "dpo_flux.yaml"
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_flow_config_fails_offline_in_one_line(config, capsys, monkeypatch):
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # as on a machine without the hub, whatever this one has
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                "1",
            ]
        )
    assert exit_info.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert (
        "Hugging Face Hub" in errors[0]
        and "--model.init_args.policy.init_args.pretrained" in errors[0]
    )
