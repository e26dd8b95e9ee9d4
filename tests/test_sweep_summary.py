"""The sweep summary: from each run's metrics.json, or from its TensorBoard event files."""

import json
from pathlib import Path

import pytest

import lightning_pref.commands.sweep.run as sweep_module
from lightning_pref.__main__ import main
from lightning_pref.commands.sweep.args import parse_args
from lightning_pref.commands.sweep.plan import make_sweep
from lightning_pref.commands.sweep.summary import event_scalars, read_run, write_summary

ROOT = Path(__file__).parents[1]
TINY = "tests/configs/tiny_dpo.yaml"
BETA = "model.init_args.objective.init_args.beta"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def run_main(argv, capsys):
    """``main(["sweep", *argv])``: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(["sweep", *argv])
    except SystemExit as err:
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


def planned_sweep(tmp_path, seeds="0,1,2"):
    """A sweep.json of beta 2000,5000 × seeds, no runs yet."""
    argv = ["--config", TINY, "--root", str(tmp_path), "--grid", f"{BETA}=2000,5000"]
    args = parse_args([*argv, "--seeds", seeds])
    sweep = make_sweep(args)
    sweep_module.write_plan(sweep)
    return sweep


def write_metrics(run_dir: Path, status, step, metrics, max_steps=10):
    version = run_dir / "version_0"
    version.mkdir(parents=True)
    record = {"status": status, "global_step": step, "max_steps": max_steps, "metrics": metrics}
    (version / "metrics.json").write_text(json.dumps(record))


def test_summary_from_metrics_json(tmp_path, capsys):
    """beta=2000: seeds 0 and 1 finished, val/loss 0.5 and 0.7: mean 0.6, sample std
    sqrt(2 * 0.1²) = 0.1414; seed 2 missing. beta=5000: seed 0 finished (0.4); seed 1 preempted
    (0.9, not averaged); seed 2 has no metrics.json but failed locally (exit 1).
    """
    sweep = planned_sweep(tmp_path)
    d = sweep.dir
    write_metrics(d / "beta=2000_seed=0", "finished", 10, {"val/loss": 0.5, "train/loss": 0.3})
    write_metrics(d / "beta=2000_seed=1", "finished", 10, {"val/loss": 0.7, "train/loss": 0.2})
    write_metrics(d / "beta=5000_seed=0", "finished", 10, {"val/loss": 0.4})
    write_metrics(d / "beta=5000_seed=1", "preempted", 6, {"val/loss": 0.9, "train/loss": 1.0})
    (d / "beta=5000_seed=2").mkdir()
    (d / "beta=5000_seed=2" / "launch.json").write_text(json.dumps({"exit_code": 1}))
    summary = write_summary(d)
    assert summary["metrics"] == ["val/loss", "train/loss"]  # no run has val/implicit_acc
    assert [r["status"] for r in summary["runs"]] == [
        "finished", "finished", "missing", "finished", "preempted", "failed",
    ]  # fmt: skip
    table = (d / "summary.md").read_text()
    assert table in capsys.readouterr().out
    assert json.loads((d / "summary.json").read_text()) == summary
    assert "| run | beta | seed | status | step | val/loss | train/loss |" in table
    assert "| beta=2000_seed=0 | 2000 | 0 | finished | 10/10 | 0.5 | 0.3 |" in table
    assert "| beta=2000_seed=2 | 2000 | 2 | missing | — | — | — |" in table
    assert "| beta=5000_seed=1 | 5000 | 1 | preempted | 6/10 | 0.9 | 1 |" in table
    assert "| beta=5000_seed=2 | 5000 | 2 | failed | — | — | — |" in table
    assert "| beta | n | val/loss | train/loss |" in table
    assert "| 2000 | 2/3 | 0.6 ± 0.1414 | 0.25 ± 0.07071 |" in table
    assert "| 5000 | 1/3 | 0.4 ± — | — ± — |" in table
    point = summary["grid_points"][0]["metrics"]["val/loss"]
    assert point == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, abs=1e-4), "n": 2}


def test_summary_metrics_option_and_summary_command(tmp_path, capsys):
    sweep = planned_sweep(tmp_path, seeds="0")
    write_metrics(sweep.dir / "beta=2000_seed=0", "finished", 10, {"train/lr": 1e-4})
    code, out, _ = run_main(["--summary", str(sweep.dir), "--metrics", "train/lr,val/loss"], capsys)
    assert code == 0
    assert "| beta=2000_seed=0 | 2000 | 0 | finished | 10/10 | 0.0001 | — |" in out
    assert "| beta=5000_seed=0 | 5000 | 0 | missing | — | — | — |" in out
    code, _, err = run_main(["--summary", str(tmp_path)], capsys)
    assert code == 2 and "is not a sweep folder: it has no sweep.json" in err


def write_events(version_dir: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(version_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_summary_falls_back_to_tensorboard_events(tmp_path):
    """Without metrics.json: the last value of each scalar; step = last logged step + 1 (0-based
    TensorBoard steps); max_steps from config.yaml; status from launch.json, else unknown. A
    resumed run's second event file wins over the first, even for steps logged twice.
    """
    sweep = planned_sweep(tmp_path, seeds="0")
    done = sweep.dir / "beta=2000_seed=0"
    write_events(done / "version_0", {"train/loss": [(0, 0.9), (1, 0.8), (2, 0.7), (3, 0.6)]})
    write_events(done / "version_0", {"val/loss": [(1, 0.5), (3, 0.4)]})
    (done / "version_0" / "config.yaml").write_text("trainer:\n  max_steps: 4\n")
    (done / "launch.json").write_text(json.dumps({"exit_code": 0}))
    resumed = sweep.dir / "beta=5000_seed=0" / "version_0"
    write_events(resumed, {"train/loss": [(s, 1.0 + s) for s in range(6)]})
    write_events(resumed, {"train/loss": [(3, 13.0), (4, 14.0)]})
    assert event_scalars(resumed) == (5, {"train/loss": 14.0})
    assert read_run(done) == {
        "status": "finished",
        "global_step": 4,
        "max_steps": 4,
        "metrics": {"train/loss": pytest.approx(0.6), "val/loss": pytest.approx(0.4)},
        "source": "events",
        "exit_code": 0,
    }
    summary = write_summary(sweep.dir)
    assert summary["metrics"] == ["val/loss", "train/loss"]
    table = (sweep.dir / "summary.md").read_text()
    assert "| beta=2000_seed=0 | 2000 | 0 | finished | 4/4 | 0.4 | 0.6 |" in table
    assert "| beta=5000_seed=0 | 5000 | 0 | unknown | 5 | — | 14 |" in table
    assert "| 5000 | 1/1 | — ± — | 14 ± — |" in table
