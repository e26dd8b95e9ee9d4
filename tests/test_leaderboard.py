"""``python -m lightning_pref leaderboard``: table, resume, failures, arguments, end to end."""

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

import lightning_pref.commands.leaderboard.run as leaderboard
from lightning_pref.__main__ import main
from lightning_pref.commands.leaderboard.run import FIT_MARKER, method_name
from lightning_pref.commands.leaderboard.table import format_table
from lightning_pref.evaluation.base_cache import BaseUse
from lightning_pref.evaluation.report import EvalReport, ScoreStats

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny_dpo.yaml")
FAST_FIT = (
    "--trainer.max_steps 2 --trainer.val_check_interval 2 --trainer.num_sanity_val_steps 0 "
    "--trainer.enable_progress_bar false"
)
FAST_EVAL = "--num_steps 2 --batch_size 4 --diversity_samples 2"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the table
def fake_result(method, seed, win_rate=None, ci=None, gold=None, proxy=None, **kw):
    """A job result as leaderboard.run_job writes it; ``status`` etc. via ``kw``."""
    scores = {"gold": {"base_mean": gold[0], "tuned_mean": gold[1]}} if gold else {}
    if proxy:
        scores["proxy"] = {"base_mean": proxy[0], "tuned_mean": proxy[1]}
    ok = kw.get("status", "ok") == "ok"
    report = {
        "gold": "gold",
        "win_rate": win_rate,
        "win_rate_ci": ci,
        "scores": scores,
        "diversity_base": kw.get("div", (None, None))[0],
        "diversity_tuned": kw.get("div", (None, None))[1],
        "implicit_acc": kw.get("implicit"),
        "num_steps": 10,
        "guidance_scale": 5.0,
        "eta": 0.0,
    }
    return {
        "method": method,
        "config": f"experiments/{method}_minipick.yaml",
        "seed": seed,
        "status": kw.get("status", "ok"),
        "failed_stage": kw.get("stage"),
        "error": kw.get("error"),
        "log": f"logs/{method}_seed{seed}.log",
        "fit_seconds": kw.get("fit"),
        "eval_seconds": kw.get("eval"),
        "settings": {"num_samples": 512, "eval_seed": 0},
        "machine": {"cpu_count": 2, "torch_threads": 1},
        "base_cache": {"hit": kw["hit"], "base_seconds": 15.0} if ok else None,
        "report": report if ok else None,
    }


def test_table_exact_markdown():
    """dpo: win rate mean (0.9 + 0.8) / 2 = 0.850, sample std sqrt(2 * 0.05²) = 0.0707;
    gold tuned (0.30 + 0.32) / 2 = 0.310; proxy tuned (7 + 7.5) / 2 = 7.25; diversity tuned
    (0.6 + 0.5) / 2 = 0.550; implicit (0.6 + 0.7) / 2 = 0.650; fit (100 + 120) / 2 = 110 s;
    eval (30 + 10) / 2 = 20 s. sft: one seed failed, so its numbers are seed 1's alone, no std.
    spo: no seed succeeded. Base: one miss of 15 s, two hits: 30 s saved.
    """
    dpo = {"proxy": (6.0, 7.0), "div": (0.7, 0.6), "implicit": 0.6}
    results = [
        fake_result(
            "dpo", 0, 0.9, [0.85, 0.95], (0.2, 0.3), **dpo, fit=100.0, eval=30.0, hit=False
        ),
        fake_result(
            "dpo",
            1,
            0.8,
            [0.74, 0.86],
            (0.2, 0.32),
            (6.0, 7.5),
            div=(0.7, 0.5),
            implicit=0.7,
            fit=120.0,
            eval=10.0,
            hit=True,
        ),
        fake_result("sft", 0, status="failed", stage="fit", error="exit code 1", fit=3.0),
        fake_result(
            "sft",
            1,
            0.55,
            [0.5, 0.6],
            (0.2, 0.21),
            (6.0, 6.1),
            div=(0.7, 0.75),
            fit=90.0,
            eval=12.0,
            hit=True,
        ),
        fake_result("spo", 0, status="failed", stage="eval", error="RuntimeError: boom", fit=5.0),
    ]
    expected = """\
Training seeds 0, 1 · 512 samples · eval seed 0 · DDIM 10 steps, CFG 5.0, η 0.0 · machine: \
2 CPUs, torch threads 1

| method | gold win rate vs base (mean ± std over seeds) | per seed [95% CI] | \
mean gold (base → tuned) | proxy (base → tuned) | diversity (base → tuned) | implicit acc. | \
fit time | eval time |
|---|---|---|---|---|---|---|---|---|
| dpo (`dpo_minipick.yaml`) | 0.850 ± 0.071 | 0: 0.900 [0.850, 0.950]; 1: 0.800 [0.740, 0.860] \
| 0.200 → 0.310 | 6.00 → 7.25 | 0.700 → 0.550 | 0.650 | 110 s | 20 s |
| sft (`sft_minipick.yaml`) | 0.550 | 0: failed; 1: 0.550 [0.500, 0.600] | 0.200 → 0.210 \
| 6.00 → 6.10 | 0.700 → 0.750 | - | 90 s | 12 s |
| spo (`spo_minipick.yaml`) | failed | 0: failed | - | - | - | - | - | - |

- Failed: sft seed 0 (fit: exit code 1); log: `logs/sft_seed0.log`
- Failed: spo seed 0 (eval: RuntimeError: boom); log: `logs/spo_seed0.log`
- Base model: sampled and scored 1 time(s) (15 s, inside those jobs' eval time), reused from \
the cache 2 time(s), saving 30 s of eval time.
"""
    assert format_table(results) == expected


def test_table_shows_the_gold_headline_parts_as_columns():
    """fidelity: win rate (0.7 + 0.6) / 2 = 0.650, mean 0.10 → (0.20 + 0.30) / 2 = 0.250;
    taste: win rate 0.9 both seeds, mean 0.40 → 0.60. Other parts (gold.color) stay out of the
    table; the proxy column keeps its place after the parts.
    """

    def with_parts(result, fidelity, taste):
        scores = result["report"]["scores"]
        for name, (base, tuned, rate) in (("fidelity", fidelity), ("taste", taste)):
            scores[f"gold.{name}"] = {"base_mean": base, "tuned_mean": tuned, "win_rate": rate}
        scores["gold.color"] = {"base_mean": 0.1, "tuned_mean": 0.2, "win_rate": 0.6}
        return result

    kw = {"div": (0.7, 0.6), "implicit": 0.6, "fit": 100.0, "eval": 30.0, "hit": False}
    results = [
        with_parts(
            fake_result("dpo", 0, 0.9, [0.85, 0.95], (0.2, 0.3), (6.0, 7.0), **kw),
            (0.1, 0.2, 0.7),
            (0.4, 0.6, 0.9),
        ),
        with_parts(
            fake_result("dpo", 1, 0.8, [0.74, 0.86], (0.2, 0.3), (6.0, 7.0), **kw),
            (0.1, 0.3, 0.6),
            (0.4, 0.6, 0.9),
        ),
    ]
    header, rule, row = format_table(results).splitlines()[2:5]
    assert header == (
        "| method | gold win rate vs base (mean ± std over seeds) | per seed [95% CI] | "
        "mean gold (base → tuned) | fidelity: win rate (base → tuned) | "
        "taste: win rate (base → tuned) | proxy (base → tuned) | diversity (base → tuned) | "
        "implicit acc. | fit time | eval time |"
    )
    assert rule == "|" + "---|" * 11
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == [
        "0.200 → 0.300",
        "0.650 (0.100 → 0.250)",
        "0.900 (0.400 → 0.600)",
        "6.00 → 7.00",
    ]


def test_method_name_from_logger_name_or_stem(tmp_path):
    assert method_name(ROOT / "experiments" / "dpo_minipick.yaml") == "dpo"  # logger = stem
    assert method_name(TINY) == "tiny_dpo"
    named = tmp_path / "sft_minipick.yaml"
    named.write_text("trainer:\n  logger:\n    init_args: {name: sft_lr1e-4}\n")
    assert method_name(named) == "sft_lr1e-4"
    (tmp_path / "plain_minipick.yaml").write_text("seed_everything: 0\n")
    assert method_name(tmp_path / "plain_minipick.yaml") == "plain"


# ------------------------------------------------------------------ fakes for the job loop
def fake_report(win_rate=0.75):
    stats = {"gold": ScoreStats(0.2, 0.01, 0.3, 0.02)}
    return EvalReport("gold", win_rate, (0.5, 1.0), 3, 0, 1, stats, 0.7, 0.6, 4, 4, 0, 10, 5.0, 0.0)


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
    """Configs ``a`` and ``b``; fit is a real subprocess that only logs and counts, eval a fake.

    Returns a function giving (fit calls, eval calls) so far, and the configs.
    """
    configs = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text("seed_everything: 0\n")
        configs.append(str(tmp_path / f"{name}.yaml"))
    counter = tmp_path / "fits.txt"
    evals = []

    def command(job, out, fit_args):
        code = 3 if job.method == "bad" else 0
        script = (
            "import pathlib, sys; "
            f"pathlib.Path({str(job.run_dir(out))!r}).mkdir(parents=True, exist_ok=True); "
            f"open({str(counter)!r}, 'a').write({job.name!r} + '\\n'); "
            f"print('fit of {job.name}'); sys.exit({code})"
        )
        return [sys.executable, "-c", script]

    def evaluate(job, out, args, cache):
        evals.append(job.name)
        if job.method == "broken":
            raise RuntimeError("scorer exploded")
        return fake_report(), BaseUse(len(evals) > 1, 2.0)

    monkeypatch.setattr(leaderboard, "fit_command", command)
    monkeypatch.setattr(leaderboard, "evaluate_job", evaluate)

    def calls():
        fits = counter.read_text().split() if counter.exists() else []
        return fits, list(evals)

    return calls, configs


def run(out, *args):
    main(["leaderboard", "--out", str(out), *args])


def test_resume_skips_results_and_finished_fits(fake_jobs, tmp_path, capsys):
    calls, configs = fake_jobs
    out = tmp_path / "lb"
    run(out, "--configs", *configs, "--seeds", "0", "1")
    assert calls() == (["a_seed0", "a_seed1", "b_seed0", "b_seed1"],) * 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/4] a seed 0: started (elapsed 0:00:00, ETA ?)"
    assert lines[1].startswith("[1/4] a seed 0: done, win rate 0.750 (fit ")
    assert "ETA 0:00:" in lines[1] and lines[7].endswith("ETA 0:00:00)")
    assert (out / "runs" / "a" / "seed1" / FIT_MARKER).is_file()
    assert "fit of a_seed1" in (out / "logs" / "a_seed1.log").read_text()
    table = (out / "leaderboard.md").read_text()

    run(out, "--configs", *configs, "--seeds", "0", "1")  # everything done: nothing runs
    assert len(calls()[0]) == 4 and len(calls()[1]) == 4
    assert "[2/4] a seed 1: skipped" in capsys.readouterr().out
    assert (out / "leaderboard.md").read_text() == table

    (out / "results" / "a_seed1.json").unlink()  # evaluation interrupted: fit is kept
    (out / "results" / "b_seed0.json").unlink()  # fit interrupted: trained again, from scratch
    (out / "runs" / "b" / "seed0" / FIT_MARKER).unlink()
    (out / "runs" / "b" / "seed0" / "stale.ckpt").write_text("half written")
    run(out, "--configs", *configs, "--seeds", "0", "1")
    fits, evals = calls()
    assert fits[4:] == ["b_seed0"] and evals[4:] == ["a_seed1", "b_seed0"]
    assert not (out / "runs" / "b" / "seed0" / "stale.ckpt").exists()

    run(out, "--configs", *configs, "--seeds", "0", "1", "--force")
    fits, evals = calls()
    assert len(fits) == 9 and len(evals) == 10


def test_failures_are_recorded_and_the_exit_code_is_1(fake_jobs, tmp_path, capsys):
    calls, configs = fake_jobs
    for name in ("bad", "broken"):
        (tmp_path / f"{name}.yaml").write_text("seed_everything: 0\n")
    out = tmp_path / "lb"
    bad, broken = str(tmp_path / "bad.yaml"), str(tmp_path / "broken.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run(out, "--configs", bad, broken, configs[0], "--seeds", "0")
    assert exit_info.value.code == 1
    assert calls() == (["bad_seed0", "broken_seed0", "a_seed0"], ["broken_seed0", "a_seed0"])
    failed = json.loads((out / "results" / "bad_seed0.json").read_text())
    assert (failed["status"], failed["failed_stage"], failed["error"]) == (
        "failed",
        "fit",
        "exit code 3",
    )
    assert failed["log"] == "logs/bad_seed0.log" and failed["report"] is None
    assert "fit of bad_seed0" in (out / failed["log"]).read_text()
    assert not (out / "runs" / "bad" / "seed0" / FIT_MARKER).exists()
    crashed = json.loads((out / "results" / "broken_seed0.json").read_text())
    assert (crashed["failed_stage"], crashed["error"]) == ("eval", "RuntimeError: scorer exploded")
    assert "Traceback" in (out / "logs" / "broken_seed0.log").read_text()
    assert json.loads((out / "results" / "a_seed0.json").read_text())["status"] == "ok"
    stdout = capsys.readouterr().out
    assert "[1/3] bad seed 0: FAILED in fit: exit code 3" in stdout
    table = (out / "leaderboard.md").read_text()
    assert "| bad (`bad.yaml`) | failed | 0: failed | - |" in table
    assert "- Failed: bad seed 0 (fit: exit code 3); log: `logs/bad_seed0.log`" in table
    assert "| a (`a.yaml`) | 0.750 | 0: 0.750 [0.500, 1.000] |" in table
    summary = json.loads((out / "leaderboard.json").read_text())
    assert [f["method"] for f in summary["failed"]] == ["bad", "broken"]

    with pytest.raises(SystemExit) as exit_info:  # resumed: the failures are still there
        run(out, "--configs", bad, broken, configs[0], "--seeds", "0")
    assert exit_info.value.code == 1 and len(calls()[0]) == 3

    run(out, "--table_only")  # rebuilding the table is not a failure
    assert (out / "leaderboard.md").read_text().splitlines()[4].startswith("| a (`a.yaml`)")


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configs", TINY, "--seeds"], "expected at least one argument"),
        (["--configs", "nope.yaml", "--seeds", "0"], "config 'nope.yaml' does not exist"),
        (["--configs", TINY, "--seeds", "0", "0"], "--seeds repeats a seed"),
        (["--configs", TINY, TINY, "--seeds", "0"], "are both method 'tiny_dpo'"),
        (["--configs", TINY, "--seeds", "x"], "invalid int value: 'x'"),
        (["--configs", TINY, "--seeds", "0", "--num_samples", "0"], "at least 1"),
        (["--configs", TINY, "--seeds", "0", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--configs", TINY, "--seeds", "0", "--eval_args", "--seed 3"], "--seed is set by"),
        (["--configs", TINY, "--seeds", "0", "--eval_args", "--nope 1"], "--eval_args: "),
        (["--configs", TINY, "--seeds", "0", "--fit_args", "'open"], "--fit_args: cannot split"),
        (["--configs", TINY, "--seeds", "0", "--fit_args=--seed_everything=1"], "set by the"),
        (
            ["--configs", TINY, "--seeds", "0", "--fit_args", "--trainer.logger.init_args.name x"],
            "--fit_args: --trainer.logger.init_args.name is set by the leaderboard",
        ),
        (["--table_only"], "no results in"),
    ],
)
def test_argument_errors_are_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "lb", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "lb" / "runs").exists()


# ------------------------------------------------------------------ end to end, tiny model
@pytest.fixture(scope="module")
def tiny_leaderboard(tmp_path_factory):
    """A real leaderboard of tiny_dpo (a 2-step fit in a subprocess, then a 4-sample eval)."""
    out = tmp_path_factory.mktemp("leaderboard")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        mp.chdir(ROOT)  # the config names its data relative to the repo root
        mp.setenv("OMP_NUM_THREADS", "1")
        args = ["--configs", TINY, "--seeds", "0", "--num_samples", "4"]
        run(out, *args, "--fit_args", FAST_FIT, "--eval_args", FAST_EVAL)
    return out, args


def test_tiny_leaderboard_end_to_end(tiny_leaderboard, monkeypatch, capsys):
    out, args = tiny_leaderboard
    result = json.loads((out / "results" / "tiny_dpo_seed0.json").read_text())
    assert result["status"] == "ok", (out / "logs" / "tiny_dpo_seed0.log").read_text()[-3000:]
    report = result["report"]
    assert (report["num_samples"], report["num_steps"], report["seed"]) == (4, 2, 0)
    assert report["wins"] + report["ties"] + report["losses"] == 4
    assert 0.0 <= report["implicit_acc"] <= 1.0  # the run's own validation pairs
    run_dir = out / "runs" / "tiny_dpo" / "seed0"
    assert report["tuned"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    assert "--seed_everything 0" in (out / "logs" / "tiny_dpo_seed0.log").read_text()
    assert result["fit_seconds"] > 0 and result["base_cache"]["hit"] is False
    table = (out / "leaderboard.md").read_text()
    assert table == format_table([result])
    summary = json.loads((out / "leaderboard.json").read_text())
    assert summary["methods"][0]["win_rate_mean"] == report["win_rate"]

    def no_subprocess(*a, **k):
        raise AssertionError("a finished job ran again")

    monkeypatch.setattr(leaderboard.subprocess, "run", no_subprocess)
    monkeypatch.setattr(leaderboard, "evaluate_job", no_subprocess)
    capsys.readouterr()
    run(out, *args)
    assert "skipped" in capsys.readouterr().out
    run(out, "--table_only")
    assert (out / "leaderboard.md").read_text() == table


def test_base_is_sampled_once_for_several_methods(tiny_leaderboard, tmp_path, monkeypatch):
    """Two methods (copies of the tiny run): the second one's evaluation reuses the base."""
    done, _ = tiny_leaderboard
    source = done / "runs" / "tiny_dpo" / "seed0"

    def copy_fit(job, out, fit_args, force):
        shutil.copytree(source, job.run_dir(out))
        return 0, 1.0

    monkeypatch.setattr(leaderboard, "run_fit", copy_fit)
    configs = []
    for name in ("first", "second"):
        (tmp_path / f"{name}.yaml").write_text("seed_everything: 0\n")
        configs.append(str(tmp_path / f"{name}.yaml"))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "lb"
    run(out, "--configs", *configs, "--seeds", "0", "--num_samples", "4", "--eval_args", FAST_EVAL)
    first, second = (read_result(out, f"{n}_seed0") for n in ("first", "second"))
    assert (first["base_cache"]["hit"], second["base_cache"]["hit"]) == (False, True)
    assert second["base_cache"]["base_seconds"] == first["base_cache"]["base_seconds"]
    expected = json.loads((done / "results" / "tiny_dpo_seed0.json").read_text())["report"]
    for result in (first, second):  # the same run evaluated with and without the cache
        assert replace_paths(result["report"]) == replace_paths(expected)
    assert len(list((out / "base_cache").glob("*.json"))) == 1
    assert "reused from the cache 1 time(s)" in (out / "leaderboard.md").read_text()


def read_result(out, name):
    return json.loads((out / "results" / f"{name}.json").read_text())


def replace_paths(report):
    return {k: v for k, v in report.items() if k != "tuned"}


def test_default_is_every_minipick_method_with_seed_0():
    """No --configs: every method's shipped MiniPick config (all exist), training seed 0."""
    from lightning_pref.commands.leaderboard.args import MINIPICK_METHODS, parse_args
    from lightning_pref.commands.leaderboard.run import method_name

    args = parse_args([])
    assert args.seeds == [0]
    assert [method_name(c) for c in args.configs] == list(MINIPICK_METHODS)
    assert all(Path(c).is_file() for c in args.configs)
    assert {"smpo", "inpo", "dspo", "mapo", "kto", "dpo"} <= set(MINIPICK_METHODS)
    assert {"npo", "capo", "exo", "self_npo", "spo", "tailorpo_g"} <= set(MINIPICK_METHODS)
    assert len(MINIPICK_METHODS) == 14


def test_every_method_with_one_seed_into_its_own_folder():
    """The README's v2 leaderboard command (one seed per folder, run side by side): every
    method, that seed only, results under that folder."""
    from lightning_pref.commands.leaderboard.args import MINIPICK_METHODS, parse_args
    from lightning_pref.commands.leaderboard.run import method_name

    args = parse_args(["--seeds", "1", "--out", "lb/s1"])
    assert args.seeds == [1]
    assert str(args.out) == "lb/s1"
    assert [method_name(c) for c in args.configs] == list(MINIPICK_METHODS)
