"""Every command in the bash blocks of the README and of ``docs/*.md`` is executed here, or by
.ci/run, or by a named test.

``PLAN`` says how each one is checked, and ``test_every_readme_command_has_a_plan`` fails when the
README or a docs page gains a command without one. Modes:

- ``ci``: ``.ci/run`` runs it (the install and test commands);
- ``run``: run as written in a sandbox folder (links to ``experiments/`` and ``tests/``, its own
  ``runs/``), with ``extra`` arguments appended where the command as written would take minutes
  (fewer steps or samples; the extra arguments come last, so they win);
- ``parse``: ``--print_config`` (or ``--dry_run`` for a SLURM sweep) appended: the configuration
  resolves, but the run needs a GPU, hub weights or data that are not here;
- ``test``: exercised by the named test (the same code path on tiny configs).

Commands that train on MiniPick's real assets carry the ``minipick`` mark: the README's second
pytest call runs them (with the strategy tests), after the default suite.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SHORT_FIT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
SHORT_EVAL = ["--num_samples", "8", "--implicit_draws", "1", "--diversity_samples", "0"]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands(files: list[Path] = DOCS) -> list[str]:
    """Each command of the ```bash blocks of ``files`` (the README and docs/): continuations
    joined, ``&&`` split, comments dropped, whitespace normalised."""
    text = "\n".join(path.read_text() for path in files)
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                parts = [" ".join(p.split()) for p in line.split(" && ")]
                if parts[0].startswith(("python3 -m venv", "ruff check")):
                    parts = [" && ".join(parts)]  # one CI command each
                commands += parts
    return commands


def lp(args: str) -> str:
    return f"python -m lightning_pref {args}"


TEST_COMMAND = (
    "ruff check . && ruff format --check . && python -m pytest && python -m pytest -m minipick"
)
TINY_FIT = lp("fit --config tests/configs/tiny_dpo.yaml --trainer.max_steps 20")
SD15 = "--config experiments/dpo_sd15.yaml"
PLAN: dict[str, dict] = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install "torch==2.13.0" -e ".[dev]"': {
        "mode": "ci"
    },
    TEST_COMMAND: {"mode": "ci"},
    lp("fit --config experiments/dpo_minipick.yaml"): {
        "mode": "run",
        "extra": SHORT_FIT,
        "minipick": 1,
    },
    lp("evaluate --run runs/dpo_minipick"): {"mode": "run", "extra": SHORT_EVAL, "minipick": 1},
    lp("leaderboard"): {
        "mode": "test",
        "test": "tests/test_leaderboard.py::test_default_is_every_minipick_method_with_seed_0",
    },
    lp("leaderboard --seeds 0 --out lb/s0"): {
        "mode": "test",
        "test": "tests/test_leaderboard.py::test_every_method_with_one_seed_into_its_own_folder",
    },
    lp(
        "leaderboard --configs experiments/dpo_minipick.yaml experiments/smpo_minipick.yaml "
        "--seeds 0 1 2 --out results/leaderboard"
    ): {"mode": "test", "test": "tests/test_leaderboard.py::test_tiny_leaderboard_end_to_end"},
    lp(
        "evaluate --run runs/dpo_minipick/version_0/checkpoints/last.ckpt --baseline base "
        "--prompts my_prompts.txt --num_samples 512 --seed 0"
    ): {"mode": "run", "extra": SHORT_EVAL, "minipick": 1},
    lp("fit --config experiments/dpo_flow_minipick.yaml"): {
        "mode": "run",
        "extra": SHORT_FIT,
        "minipick": "flow",
    },
    lp("evaluate --run runs/dpo_flow_minipick"): {
        "mode": "run",
        "extra": SHORT_EVAL,
        "minipick": "flow",
    },
    lp(
        "leaderboard --configs experiments/dpo_flow_minipick.yaml "
        "experiments/kto_flow_minipick.yaml experiments/pnapo_flow_minipick.yaml "
        "experiments/smpo_flow_minipick.yaml experiments/spo_flow_minipick.yaml --seeds 0 "
        "--out lb_flow/s0"
    ): {"mode": "test", "test": "tests/test_leaderboard.py::test_tiny_leaderboard_end_to_end"},
    TINY_FIT: {"mode": "run"},
    lp("fit --config tests/configs/tiny_dpo_sd3.yaml --trainer.max_steps 4"): {"mode": "run"},
    lp("bench --arch sd35m --out bench_sd35m"): {
        "mode": "test",
        "test": "tests/test_bench.py::test_bench_sd35m_counts_on_meta",
    },
    lp("bench --out runs/bench"): {
        "mode": "run",
        "extra": ["--steps", "2", "--warmup", "1", "--batch_size", "2"],
        "expect": "framework / baseline:",
    },
    lp(
        "bench --arch sd15 --batch_size 16 --steps 20 --warmup 5 --peak_tflops 989 --num_workers 4 "
        "--onpolicy true --out bench_sd15"
    ): {
        "mode": "test",
        "test": "tests/test_bench.py::test_bench_runs_all_paths_and_the_onpolicy_round",
    },
    lp(
        "bench --arch sdxl --batch_size 8 --steps 10 --warmup 5 --peak_tflops 989 --num_workers 4 "
        "--out bench_sdxl"
    ): {
        "mode": "test",
        "test": "tests/test_bench.py::test_sdxl_layout_and_fast_options_run_in_both_loops",
    },
    lp(f"fit {SD15}"): {"mode": "parse"},
    lp("fit --config experiments/dpo_sd15_lora.yaml"): {"mode": "parse"},
    "tensorboard --logdir runs/": {"mode": "run", "extra": ["--inspect"]},
    lp(f"fit {SD15} --print_config"): {"mode": "run"},
    lp(
        f"fit {SD15} --model.init_args.objective.init_args.beta 2000.0 "
        "--model.init_args.policy.init_args.pretrained /data/stable-diffusion-v1-5 "
        "--data.init_args.train_files /data/pickapic_v2/data/train"
    ): {"mode": "parse"},
    lp(
        "score-pairs --input data/pickapic_v2/data --output data/pickapic_v2_scored "
        "--scorer lightning_pref.scoring.PretrainedPickScore --scorer.logit_scale false"
    ): {"mode": "test", "test": "tests/data/test_scored.py::test_score_pairs_cli_end_to_end"},
    lp("fit --config experiments/spo_minipick.yaml"): {"mode": "parse"},
    lp("fit --config experiments/spo_sd15.yaml --data.init_args.train_prompts PROMPTS.json"): {
        "mode": "parse"
    },
    lp("fit --config experiments/spm_minipick.yaml"): {"mode": "parse"},
    lp(
        "fit --config experiments/dpo_folder.yaml --data.init_args.root tests/assets/pair_folder "
        "--data.init_args.batch_size 4"
    ): {
        "mode": "run",
        "extra": SHORT_FIT,
        "minipick": 1,
    },
    lp(
        f"fit {SD15} --data lightning_pref.data.PairFolderDataModule --data.init_args.root my_pairs"
    ): {"mode": "parse"},
    lp("fit --config tests/configs/tiny_dpo.yaml --trainer.max_steps 40 --ckpt_path last"): {
        "mode": "run",
        "after": TINY_FIT,
        "expect": "--ckpt_path last: resuming from runs/tiny_dpo/version_",
    },
    **{
        lp(f"fit {SD15} --config experiments/strategies/{name}.yaml --trainer.devices 8"): {
            "mode": "parse"
        }
        for name in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
    },
    lp(
        "fit --config tests/configs/tiny_dpo.yaml --config experiments/strategies/fsdp.yaml "
        "--trainer.devices 2 --trainer.max_steps 6 --trainer.val_check_interval 2"
    ): {
        "mode": "test",
        "test": "tests/resume/test_strategies.py::test_strategy_trains_checkpoints_and_resumes",
    },
    lp(
        f"sweep {SD15} --config experiments/strategies/fsdp.yaml --launcher slurm --partition gpu "
        '--nodes 2 --gpus_per_node 8 --time 24:00:00 --fit_args "--trainer.num_nodes 2 '
        '--trainer.devices 8" --dry_run'
    ): {"mode": "run", "needs": "sbatch"},
    lp(
        "sweep --config tests/configs/tiny_dpo.yaml --grid "
        "model.init_args.objective.init_args.beta=2000,5000 --seeds 0,1 --fit_args "
        '"--trainer.max_steps 4 --trainer.val_check_interval 2"'
    ): {"mode": "test", "test": "tests/test_sweep.py::test_local_2x1_sweep_of_the_tiny_config"},
    lp(
        f"sweep {SD15} --launcher slurm --grid model.init_args.objective.init_args.beta=2000,5000 "
        "--seeds 0,1,2 --partition gpu --nodes 2 --gpus_per_node 8 --time 24:00:00 --fit_args "
        '"--trainer.num_nodes 2 --trainer.devices 8"'
    ): {"mode": "parse", "needs": "sbatch"},
    lp("sweep --summary runs/dpo_sd15_sweep"): {
        "mode": "test",
        "test": "tests/test_sweep_summary.py::test_summary_metrics_option_and_summary_command",
    },
    lp(
        "fit --config tests/configs/tiny_dpo.yaml --trainer.max_steps 20 "
        "--trainer.callbacks+=lightning_pref.callbacks.SampleGrid "
        "--trainer.callbacks.every_n_steps 10 --trainer.callbacks+=lightning_pref.callbacks.EMA "
        "--trainer.callbacks.decay 0.99"
    ): {"mode": "run"},
    lp("cache-latents --config tests/configs/tiny_dpo.yaml --out cache/tiny_dpo"): {"mode": "run"},
    lp("evaluate --config experiments/eval/sd15_partiprompts.yaml --run runs/dpo_sd15"): {
        "mode": "test",
        "test": "tests/test_prompt_sets.py::"
        "test_example_eval_configs_parse_with_every_reward_scorer",
    },
    lp("fit --config experiments/npo_minipick.yaml"): {
        "mode": "run",
        "extra": SHORT_FIT,
        "minipick": 1,
    },
    lp("evaluate --run runs/npo_minipick"): {"mode": "run", "extra": SHORT_EVAL, "minipick": 1},
    lp("evaluate --run runs/npo"): {
        "mode": "test",
        "test": "tests/test_evaluate_negative.py::"
        "test_npo_run_means_base_plus_npo_and_changes_the_samples",
    },
    lp("evaluate --run runs/dpo --negative runs/npo"): {
        "mode": "test",
        "test": "tests/test_evaluate_negative.py::"
        "test_negative_equal_to_the_base_gives_plain_evaluation",
    },
    lp("evaluate --run runs/dpo --negative runs/npo --baseline runs/dpo"): {
        "mode": "test",
        "test": "tests/test_evaluate_negative.py::"
        "test_npo_on_both_sides_ties_and_reports_what_was_compared",
    },
    lp("fit --config experiments/dpo_sd15_fast.yaml"): {"mode": "parse"},
    lp("export --ckpt_path runs/dpo_sd15/version_0/checkpoints/last.ckpt --out exports/dpo_sd15"): {
        "mode": "test",
        "test": "tests/test_export.py::test_full_export_is_a_ddim_pipeline_that_samples_like_ours",
    },
    lp(
        "export --ckpt_path runs/dpo_sd15_lora/version_0/checkpoints/last.ckpt "
        "--out exports/dpo_sd15_lora"
    ): {
        "mode": "test",
        "test": "tests/test_export.py::test_lora_export_loads_into_the_base_pipeline",
    },
    lp(
        "export --ckpt_path runs/dpo_sd15/version_0/checkpoints/last.ckpt "
        "--out exports/dpo_sd15_ema --ema true"
    ): {
        "mode": "test",
        "test": "tests/test_export.py::test_ema_export_writes_the_averaged_weights",
    },
}


def test_every_readme_command_has_a_plan():
    commands = set(readme_commands())  # a command shown twice is checked once
    assert commands == set(PLAN), commands ^ set(PLAN)


def test_docs_commands_are_collected(tmp_path):
    """A command that lives only in a docs page is found (and then needs a plan)."""
    assert len(DOCS) > 1 and all(p.parent.name == "docs" for p in DOCS[1:])
    page = tmp_path / "page.md"
    page.write_text("text\n```bash\npython -m lightning_pref new-command --x 1  # why\n```\n")
    assert readme_commands([page]) == ["python -m lightning_pref new-command --x 1"]
    assert "python -m lightning_pref new-command --x 1" not in PLAN


def test_ci_runs_the_ci_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for command, plan in PLAN.items():
        if plan["mode"] == "ci":
            assert command.split(" && ")[-1] in ci, command


@pytest.mark.parametrize("command", [c for c, p in PLAN.items() if p["mode"] == "test"])
def test_named_test_exists(command):
    path, name = PLAN[command]["test"].split("::")
    assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M), PLAN[command]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder that looks like the repository to the commands, with its own runs/."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("experiments", "tests", "results"):
        (folder / name).symlink_to(ROOT / name)
    (folder / "my_prompts.txt").write_text(
        "a large red circle on the left\na small blue square at the top\n"
    )
    return folder


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def _execute(command: str, sandbox: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*_argv(command), *extra], cwd=sandbox, env=env, capture_output=True, text=True, timeout=600
    )


ORDERED = [c for c, p in PLAN.items() if p["mode"] in ("run", "parse")]
ORDERED.sort(key=lambda c: "after" in PLAN[c])  # dependents last (module order is kept)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.minipick) if PLAN[c].get("minipick") else c
        for c in ORDERED
    ],
)
def test_readme_command(command, sandbox, monkeypatch, capsys, request):
    plan = PLAN[command]
    if plan.get("minipick"):
        request.getfixturevalue("minipick_assets")
    if plan.get("minipick") == "flow":
        request.getfixturevalue("minipick_flow_assets")
    needs = plan.get("needs")
    if needs and subprocess.run(["which", needs], capture_output=True).returncode != 0:
        pytest.skip(f"{needs} is not installed (the SLURM tests install it as root)")
    if plan["mode"] == "parse":  # in-process: resolving a config takes a fraction of a second
        from lightning_pref.__main__ import main

        monkeypatch.chdir(sandbox)
        dry = ["--dry_run"] if " sweep " in f" {command} " else ["--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            main([*shlex.split(command)[3:], *dry])
            raise SystemExit(0)
        assert exit_info.value.code in (0, None), capsys.readouterr().err[-3000:]
        return
    proc = _execute(command, sandbox, plan.get("extra", []))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    if "expect" in plan:
        assert plan["expect"] in proc.stdout + proc.stderr
