"""SPO, TailorPO and TailorPO-G on MiniPick, end to end (about 8 minutes each plus assets: slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spo_minipick", "tailorpo_minipick", "tailorpo_g_minipick"])
def test_on_policy_method_beats_base(tmp_path_factory, name):
    home = tmp_path_factory.getbasetemp() / "onpolicy_home"  # assets shared by the three runs
    tmp_path = tmp_path_factory.mktemp(name)
    env = {**os.environ, "LIGHTNING_PREF_HOME": str(home)}
    run = [sys.executable, "-m", "lightning_pref"]
    config = str(ROOT / "experiments" / f"{name}.yaml")
    runs = str(tmp_path / "runs")
    fit = [*run, "fit", "--config", config, "--trainer.logger.init_args.save_dir", runs]
    subprocess.run(fit, cwd=ROOT, env=env, check=True, timeout=1800)
    evaluate = [*run, "evaluate", "--run", f"{runs}/{name}", "--out", str(tmp_path / "eval")]
    subprocess.run(evaluate, cwd=ROOT, env=env, check=True, timeout=900)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_samples"] >= 400
    assert report["win_rate"] >= 0.60, report
