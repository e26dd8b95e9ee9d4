"""``python -m lightning_pref sweep``: grid, names, errors, dry runs, sbatch script, summary."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

import lightning_pref.commands.sweep.plan as sweep_plan
import lightning_pref.commands.sweep.run as sweep_module
from lightning_pref.__main__ import main
from lightning_pref.commands.sweep.args import parse_args
from lightning_pref.commands.sweep.plan import make_sweep, short_names, value_label
from lightning_pref.commands.sweep.run import launch_local, runs_to_launch
from lightning_pref.commands.sweep.summary import is_finished
from lightning_pref.errors import ConfigError

ROOT = Path(__file__).parents[1]
TINY = "tests/configs/tiny_dpo.yaml"  # relative, as a user types it: runs start in ROOT
BETA = "model.init_args.objective.init_args.beta"
FAST_FIT = (
    "--trainer.max_steps 4 --trainer.val_check_interval 2 --trainer.limit_val_batches 1 "
    "--trainer.num_sanity_val_steps 0 --trainer.enable_progress_bar false"
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def sweep_args(tmp_path, *extra):
    return ["--config", TINY, "--root", str(tmp_path / "runs"), *extra]


def run_main(argv, capsys):
    """``main(["sweep", *argv])``: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(["sweep", *argv])
    except SystemExit as err:
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ grid and names
def test_grid_times_seeds_in_order_with_readable_names(tmp_path):
    args = parse_args(
        sweep_args(
            tmp_path,
            *("--grid", f"{BETA}=2000,5000", "--grid", "data.init_args.batch_size=2,4"),
            *("--seeds", "0,1,2"),
        )
    )
    sweep = make_sweep(args)
    assert sweep.name == "tiny_dpo_sweep"
    assert sweep.dir == tmp_path / "runs" / "tiny_dpo_sweep"
    names = [r.name for r in sweep.runs]
    assert len(names) == 2 * 2 * 3
    assert names[:4] == [
        "beta=2000_batch_size=2_seed=0",
        "beta=2000_batch_size=2_seed=1",
        "beta=2000_batch_size=2_seed=2",
        "beta=2000_batch_size=4_seed=0",
    ]
    assert names[-1] == "beta=5000_batch_size=4_seed=2"
    assert sweep.runs[-1].values == {BETA: "5000", "data.init_args.batch_size": "4"}
    assert [r.seed for r in sweep.runs[:3]] == [0, 1, 2]


def test_only_seeds_and_a_chosen_name(tmp_path):
    sweep = make_sweep(parse_args(sweep_args(tmp_path, "--seeds", "3,4", "--name", "mine")))
    assert [r.name for r in sweep.runs] == ["seed=3", "seed=4"]
    assert sweep.dir == tmp_path / "runs" / "mine"


def test_short_names_take_more_segments_only_when_last_ones_clash():
    keys = [BETA, "model.init_args.reference_objective.init_args.beta", "trainer.max_steps"]
    assert short_names(keys) == {
        BETA: "objective.beta",
        keys[1]: "reference_objective.beta",
        "trainer.max_steps": "max_steps",
    }


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("lightning_pref.objectives.SmPO", "SmPO"),
        ("1.0e-4", "1.0e-4"),
        ("bf16-mixed", "bf16-mixed"),
        ("a/b c", "a-b-c"),
        ("[1,2]", "-1-2-"),
    ],
)
def test_value_labels_are_safe_in_paths(value, label):
    assert value_label(value) == label


def test_grid_values_with_commas_inside_brackets(tmp_path):
    args = parse_args(sweep_args(tmp_path, "--grid", "model.init_args.x=[1,2],[3,4]"))
    assert args.grid == [("model.init_args.x", ["[1,2]", "[3,4]"])]


def test_run_command_is_the_documented_fit_command(tmp_path):
    args = parse_args(
        sweep_args(tmp_path, "--grid", f"{BETA}=2000", "--seeds", "7", "--fit_args", FAST_FIT)
    )
    (run,) = make_sweep(args).runs
    save_dir = str(tmp_path / "runs" / "tiny_dpo_sweep")
    assert run.command == [
        *(os.path.abspath(sys.executable), "-m", "lightning_pref", "fit", "--config", TINY),
        *("--seed_everything", "7", "--trainer.logger.class_path", LOGGER),
        *("--trainer.logger.init_args.save_dir", save_dir),
        *("--trainer.logger.init_args.name", "beta=2000_seed=7"),
        *("--trainer.logger.init_args.version", "0", "--ckpt_path", "last", f"--{BETA}", "2000"),
        *shlex.split(FAST_FIT),
    ]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "beta2000"], "--grid 'beta2000': write KEY=VALUE1,VALUE2,..."),
        (["--grid", f"{BETA}="], f"--grid '{BETA}=': no values after '='"),
        (["--grid", f"{BETA}=1,,2"], "an empty value"),
        (["--grid", f"{BETA}=1", "--grid", "model.objective.beta=2"], "given twice"),
        (["--grid", f"{BETA}=a/b,a-b"], "both make run 'beta=a-b_seed=0'"),
        (["--grid", "seed_everything=1,2"], "seed_everything is set by the sweep"),
        (["--fit_args", "--seed_everything 3"], "--seed_everything is set by the sweep"),
        (["--grid", f"{BETA}=1,2", "--fit_args", f"--{BETA}=3"], "is a --grid key"),
        (["--seeds", "0,x"], "--seeds '0,x': write integers"),
        (["--partition", "gpu"], "--partition is a SLURM option; add --launcher slurm"),
        (["--config", "nope.yaml"], "config 'nope.yaml' does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    code, _, err = run_main(sweep_args(tmp_path, *argv), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert not (tmp_path / "runs").exists()


def test_slurm_without_sbatch_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code, _, err = run_main(sweep_args(tmp_path, "--launcher", "slurm"), capsys)
    assert code == 2
    assert "needs sbatch on PATH: install SLURM (README" in err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (f"{BETA}a=1,2", "run betaa=1_seed=0: model.objective"),
        (f"{BETA}=2000,abc", "run beta=abc_seed=0: model.objective"),
    ],
)
def test_a_bad_key_or_value_is_named_before_any_run(tmp_path, capsys, grid, message):
    code, out, err = run_main(sweep_args(tmp_path, "--grid", grid), capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}")
    assert ("betaa" in last) if "betaa" in grid else ("abc" in last or "float" in last)
    assert "started" not in out and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ dry runs and SLURM
def test_dry_run_prints_runs_and_writes_nothing(tmp_path, capsys):
    argv = sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--seeds", "0,1", "--dry_run")
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    assert "sweep tiny_dpo_sweep: 4 runs in" in out
    python = shlex.quote(os.path.abspath(sys.executable))
    for name in ("beta=2000_seed=0", "beta=2000_seed=1", "beta=5000_seed=0", "beta=5000_seed=1"):
        assert f"  {name}\n    {python} -m lightning_pref fit" in out
        assert f"--trainer.logger.init_args.name {name} " in out
    assert "dry run: nothing written, nothing run" in out
    assert not (tmp_path / "runs").exists()


SLURM_OPTIONS = [
    *("--partition", "gpu", "--time", "01:30:00", "--nodes", "2", "--gpus_per_node", "4"),
    *("--cpus_per_task", "8", "--mem", "64G", "--max_parallel", "2", "--signal_lead_s", "120"),
    *("--sbatch_line", "--account=lab", "--sbatch_line", "#SBATCH --qos=low"),
]


def slurm_dry_run(tmp_path, capsys, *extra):
    argv = sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--seeds", "0,1")
    code, out, _ = run_main([*argv, "--launcher", "slurm", "--dry_run", *extra], capsys)
    assert code == 0
    script = tmp_path / "runs" / "tiny_dpo_sweep" / "slurm" / "sweep.sbatch"
    assert f"dry run: wrote {script}; submitted nothing" in out
    return script.read_text(), out


def test_sbatch_script_has_the_requested_directives(tmp_path, capsys):
    text, out = slurm_dry_run(tmp_path, capsys, *SLURM_OPTIONS)
    assert text in out  # printed as well
    sweep_dir = tmp_path / "runs" / "tiny_dpo_sweep"
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=tiny_dpo_sweep",
        "#SBATCH --array=0-3%2",
        f"#SBATCH --output={sweep_dir}/slurm/%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=01:30:00",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --account=lab",
        "#SBATCH --qos=low",
    ]
    assert text.startswith("#!/bin/bash\n# Sweep tiny_dpo_sweep: 4 runs")
    assert f"\ncd {ROOT}\n" in text
    assert 'exec srun "${CMD[@]}"' in text
    assert f"CMD=({os.path.abspath(sys.executable)} -m lightning_pref fit" in text
    assert not (sweep_dir / "sweep.json").exists()  # a dry run writes the script only


def test_sbatch_script_leaves_out_options_not_given(tmp_path, capsys):
    text, _ = slurm_dry_run(tmp_path, capsys)
    directives = "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))
    assert "--array=0-3\n" in directives and "--signal=USR1@90" in directives
    for option in ("partition", "time", "nodes", "gpus", "ntasks", "cpus", "mem"):
        assert f"--{option}" not in directives


def fake_tool(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def test_sbatch_script_runs_its_array_tasks_command(tmp_path, capsys):
    text, _ = slurm_dry_run(tmp_path, capsys, "--fit_args", "--trainer.max_steps 4")
    script = tmp_path / "runs" / "tiny_dpo_sweep" / "slurm" / "sweep.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    bin_dir, calls = tmp_path / "bin", tmp_path / "srun_args.txt"
    fake_tool(bin_dir, "srun", f'printf "%s\\n" "$@" > {calls}\n')
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "2"}
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "array task 2 is run beta=5000_seed=0" in result.stdout
    args = parse_args(sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--seeds", "0,1"))
    args = replace(args, fit_args=["--trainer.max_steps", "4"])
    assert calls.read_text().splitlines() == make_sweep(args).runs[2].command
    env["SLURM_ARRAY_TASK_ID"] = "4"
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "no run for array task 4" in result.stderr


def test_submission_uses_sbatch_parsable_and_records_the_job(tmp_path, capsys, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch_args.txt"
    fake_tool(bin_dir, "sbatch", f'printf "%s\\n" "$@" > {calls}\necho "4242;local"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    argv = sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--launcher", "slurm")
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    sweep_dir = tmp_path / "runs" / "tiny_dpo_sweep"
    script = sweep_dir / "slurm" / "sweep.sbatch"
    assert calls.read_text().splitlines() == ["--parsable", str(script)]
    assert f"submitted array job 4242: 2 tasks ({script})" in out
    assert f"{sweep_dir}/slurm/4242_<task>.out" in out
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["submissions"][0]["job_id"] == "4242"
    assert plan["submissions"][0]["runs"] == ["beta=2000_seed=0", "beta=5000_seed=0"]
    assert [r["name"] for r in plan["runs"]] == plan["submissions"][0]["runs"]


# ------------------------------------------------------------------ local launcher
def planned_sweep(tmp_path, seeds="0,1,2"):
    """A sweep.json of beta 2000,5000 × seeds, no runs yet."""
    args = parse_args(sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--seeds", seeds))
    sweep = make_sweep(args)
    sweep_module.write_plan(sweep)
    return sweep


def fake_fit(tmp_path):
    """A stand-in for fit: seed 1 fails; the others write a finished metrics.json."""
    code = textwrap.dedent(
        """
        import json, pathlib, sys
        run_dir, seed = pathlib.Path(sys.argv[1]), int(sys.argv[2])
        print("fitting", run_dir.name)
        if seed == 1:
            sys.exit("boom: seed 1")
        (run_dir / "version_0").mkdir(parents=True, exist_ok=True)
        record = {"status": "finished", "global_step": 2, "max_steps": 2,
                  "metrics": {"val/loss": 0.1 * (seed + 1)}}
        (run_dir / "version_0" / "metrics.json").write_text(json.dumps(record))
        """
    )

    def command(args, save_dir, name, seed, values):
        return [sys.executable, "-c", code, str(save_dir / name), str(seed)]

    return command


def test_local_launcher_goes_on_after_a_failure_and_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep_plan, "fit_command", fake_fit(tmp_path))
    monkeypatch.setattr(sweep_module, "validate", lambda sweep: None)
    argv = sweep_args(tmp_path, "--grid", f"{BETA}=2000,5000", "--seeds", "0,1")
    code, out, _ = run_main(argv, capsys)
    assert code == 1
    d = tmp_path / "runs" / "tiny_dpo_sweep"
    assert "[2/4] beta=2000_seed=1: FAILED (exit code 1)" in out
    assert "boom: seed 1" in out  # the end of the log
    assert "[4/4] beta=5000_seed=1: FAILED" in out
    assert "2 of 4 runs failed: beta=2000_seed=1, beta=5000_seed=1" in out
    assert "| beta=5000_seed=0 | 5000 | 0 | finished | 2/2 | 0.1 |" in out
    assert "| beta=5000_seed=1 | 5000 | 1 | failed | — | — |" in out
    assert "fitting beta=5000_seed=0" in (d / "beta=5000_seed=0" / "fit.log").read_text()
    assert json.loads((d / "beta=2000_seed=1" / "launch.json").read_text())["exit_code"] == 1
    assert is_finished(d / "beta=2000_seed=0") and not is_finished(d / "beta=2000_seed=1")
    # again: the finished runs are skipped, the failed ones run again
    code, out, _ = run_main(argv, capsys)
    assert code == 1
    assert "2 runs in" in out and "2 finished and skipped" in out
    assert "[1/2] beta=2000_seed=1: started" in out


def test_force_deletes_and_reruns_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_plan, "fit_command", fake_fit(tmp_path))
    sweep = make_sweep(parse_args(sweep_args(tmp_path, "--seeds", "0")))
    assert launch_local(sweep, sweep.runs) == {"seed=0": 0}
    stale = sweep.dir / "seed=0" / "version_0" / "stale.txt"
    stale.write_text("old")
    assert runs_to_launch(sweep, force=False) == []
    assert runs_to_launch(sweep, force=True) == sweep.runs
    assert not stale.exists()


def test_a_sweep_folder_of_other_configs_is_not_reused(tmp_path):
    planned_sweep(tmp_path)
    other = tmp_path / "overlay.yaml"
    other.write_text("trainer: {max_steps: 2}\n")
    args = parse_args(sweep_args(tmp_path, "--name", "tiny_dpo_sweep", "--config", str(other)))
    with pytest.raises(ConfigError, match="holds a sweep of"):
        sweep_module.write_plan(make_sweep(args))


def test_local_2x1_sweep_of_the_tiny_config(tmp_path):
    """Two betas × one seed of real tiny fits, one after another; both finish and are tabled (the
    grid × seeds product is covered by test_sweep_args and the 2×2 SLURM array test)."""
    command = [sys.executable, "-m", "lightning_pref", "sweep", "--config", TINY]
    command += ["--grid", f"{BETA}=2000,5000", "--seeds", "0", "--root", str(tmp_path)]
    command += ["--name", "local", "--fit_args", FAST_FIT]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    runs = {r["name"]: r for r in summary["runs"]}
    assert list(runs) == [f"beta={b}_seed=0" for b in (2000, 5000)]
    for name, run in runs.items():
        assert (run["status"], run["global_step"], run["max_steps"]) == ("finished", 4, 4), name
        assert {"val/loss", "train/loss"} <= set(run["metrics"])
        config = (tmp_path / "local" / name / "version_0" / "config.yaml").read_text()
        assert f"name: {name}" in config and f"beta: {run['values'][BETA]}.0" in config
    # beta reaches the objective: the same seed trains differently
    assert runs["beta=2000_seed=0"]["metrics"]["train/loss"] != pytest.approx(
        runs["beta=5000_seed=0"]["metrics"]["train/loss"]
    )
    assert [p["values"][BETA] for p in summary["grid_points"]] == ["2000", "5000"]
    assert all(p["metrics"]["val/loss"]["n"] == 1 for p in summary["grid_points"])
    assert "| beta=5000_seed=0 | 5000 | 0 | finished | 4/4 |" in result.stdout
    # a second launch finds every run finished and trains nothing
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "0 runs in" in again.stdout and "2 finished and skipped" in again.stdout
