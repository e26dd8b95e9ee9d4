"""The equal tuning budget of MiniPick v2: every method gets the same learning-rate grid.

How the numbers in ``README.md`` beside this file were made (from the repository root):

    python results/minipick_v2_tuning/tune.py --out OUT --device cuda --parallel 14

1. ``tune``: each method's shipped config (``experiments/<method>_minipick.yaml``) is trained
   with training seed 0 at its learning rate before tuning (``base_lr``) times each of
   ``--mults`` (nothing else changed),
   and each run is evaluated against the base on MiniPick's 28 *validation* prompts
   (``validation_prompts.txt``, written from ``world.prompts("validation")``), never on the
   test prompts. Every job is a ``python -m lightning_pref leaderboard`` call, so each run is
   trained and evaluated exactly as the leaderboard does.
   ``merge`` (for legs run elsewhere) places their result JSONs where ``select`` reads them:
   the CPU x0.5 leg was run with ``--phase tune --device cpu --parallel 2 --mults 0.5``, then
   ``--phase merge --legs h200/tune cpu_x2`` and ``--phase select --mults 1 2 0.5``.
2. ``select``: per method, the multiplier with the highest validation gold win rate (a tie goes
   to the multiplier closer to 1, the v1 value), among the multipliers that every method
   finished before ``--tune_budget`` (equal budgets); written to ``OUT/selection.json``.
3. ``final``: the selected learning rate, training seeds 0 and 1 (DPO 0, 1 and 2; seed 0 is the
   tuning run itself, not trained again), evaluated on the 56 held-out *test* prompts with 512
   samples, eval seed 0 (the leaderboard's defaults); the results of all jobs are gathered in
   ``OUT/final/merged`` and ranked by ``leaderboard --table_only``.

Jobs run side by side (``--parallel``), one torch thread each. A failed job is recorded and the
rest go on. This is a provenance script for one measurement, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = (
    "smpo",
    "inpo",
    "tailorpo_g",
    "tailorpo",
    "spo",
    "capo",
    "self_npo",
    "exo",
    "dspo",
    "dpo",
    "npo",
    "mapo",
    "kto",
    "sft",
)  # fmt: skip  (the slowest on CPU first, so that they do not finish last)
HERE = Path(__file__).resolve().parent
VALIDATION = HERE / "validation_prompts.txt"
LR = "--model.init_args.optimizer.init_args.lr"


# Learning rates before this budget changed any config (the v1 values): the grid's multipliers apply
# to these, so a leg run after a selection changed a config has the same base as the legs before.
BEFORE_TUNING = {
    **dict.fromkeys(("smpo", "inpo", "capo", "exo", "dspo", "dpo", "mapo", "kto", "sft"), 2e-5),
    **{"tailorpo_g": 5e-5, "tailorpo": 5e-5, "spo": 5e-5, "self_npo": 3.3e-6, "npo": 1e-4},
}


def base_lr(method: str) -> float:
    """The learning rate the tuning multipliers apply to: the one before tuning."""
    return BEFORE_TUNING[method]


def leaderboard(out: Path, method: str, seeds, fit_args, eval_args, num_samples) -> list[str]:
    """The leaderboard command of one job."""
    return [
        *(sys.executable, "-m", "lightning_pref", "leaderboard"),
        *("--configs", f"experiments/{method}_minipick.yaml"),
        *("--seeds", *map(str, seeds), "--out", str(out), "--num_samples", str(num_samples)),
        f"--fit_args={' '.join(fit_args)}",
        f"--eval_args={' '.join(eval_args)}",
    ]


def run_all(commands: dict[str, list[str]], logs: Path, parallel: int, deadline: float) -> dict:
    """Run the commands side by side until ``deadline`` (a ``time.time()``).

    Returns {name: {"code", "seconds"}}.

    A job still running at the deadline is stopped with its process group (code -9).
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def one(item):
        name, command = item
        start = time.perf_counter()
        if time.time() > deadline - 30:
            return name, {"code": None, "seconds": 0.0}
        with (logs / f"{name}.log").open("w") as stream:
            proc = subprocess.Popen(
                command, stdout=stream, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                code = proc.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = -9
        seconds = time.perf_counter() - start
        print(f"{name}: exit {code} in {seconds:.0f} s", flush=True)
        return name, {"code": code, "seconds": round(seconds, 1)}

    with ThreadPoolExecutor(parallel) as pool:
        return dict(pool.map(one, commands.items()))


def device_args(device: str) -> tuple[list[str], list[str]]:
    """Fit and evaluate arguments that place the work on ``device`` ('cpu' or 'cuda')."""
    if device == "cpu":
        return [], []
    return ["--trainer.accelerator=gpu"], ["--device", device]


def result_of(folder: Path, method: str, seed: int) -> dict | None:
    """The result JSON of a leaderboard job, or None."""
    path = folder / "results" / f"{method}_seed{seed}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tune(args) -> None:
    """Phase 1: every method at every multiplier, seed 0, validation prompts."""
    fit, ev = device_args(args.device)
    commands = {}
    for mult in args.mults:  # multiplier by multiplier: a deadline cuts the last one short
        for method in args.methods:
            lr = base_lr(method) * mult
            commands[f"{method}_x{mult:g}"] = leaderboard(
                args.out / "tune" / f"{method}_x{mult:g}",
                method,
                [0],
                [*fit, f"{LR}={lr:.6g}", *args.fit_args],
                [*ev, "--prompts", str(VALIDATION)],
                args.val_samples,
            )
    times = run_all(
        commands, args.out / "logs" / "tune", args.parallel, args.start + args.tune_budget
    )
    (args.out / "tune_times.json").write_text(json.dumps(times, indent=1) + "\n")


def merge(args) -> None:
    """Bring earlier legs into ``OUT/tune``: each ``--legs`` folder holds ``<method>_x<mult>.json``.

    A leg run elsewhere (the H200 legs, the CPU x2 runs) kept only its result JSONs; they are
    placed where ``select`` reads them and recorded as finished in ``OUT/tune_times.json``.
    """
    times_path = args.out / "tune_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for leg in args.legs:
        for path in sorted(leg.glob("*_x*.json")):
            name = path.stem
            method = name.rsplit("_x", 1)[0]
            target = args.out / "tune" / name / "results" / f"{method}_seed0.json"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
                times[name] = {"code": 0, "seconds": None, "from": str(leg)}
    times_path.write_text(json.dumps(times, indent=1) + "\n")


def select(args) -> None:
    """Phase 2: each method's multiplier with the best validation gold win rate."""
    times = json.loads((args.out / "tune_times.json").read_text())
    cut = {k for k, v in times.items() if v["code"] in (None, -9)}  # stopped by the deadline
    mults = [m for m in args.mults if not any(k.endswith(f"_x{m:g}") for k in cut)]
    print(f"multipliers every method finished: {mults}", flush=True)
    selection = {}
    for method in args.methods:
        scores = {}
        for mult in mults:
            res = result_of(args.out / "tune" / f"{method}_x{mult:g}", method, 0)
            if res and res["status"] == "ok":
                gold = res["report"]["scores"]["gold"]
                scores[mult] = {
                    "gold_win_rate": gold["win_rate"],
                    "fidelity_win_rate": res["report"]["scores"]["gold.fidelity"]["win_rate"],
                    "taste_win_rate": res["report"]["scores"]["gold.taste"]["win_rate"],
                }
        if not scores:
            selection[method] = {"mult": None, "lr": None, "validation": {}}
            continue
        best = max(scores, key=lambda m: (round(scores[m]["gold_win_rate"], 6), -abs(m - 1)))
        selection[method] = {
            "mult": best,
            "lr": base_lr(method) * best,
            "validation": {f"{m:g}": s for m, s in scores.items()},
        }
    (args.out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    print(json.dumps({m: s["mult"] for m, s in selection.items()}))


def final(args) -> None:
    """Phase 3: the selected learning rates on the training seeds, test prompts."""
    fit, ev = device_args(args.device)
    selection = json.loads((args.out / "selection.json").read_text())
    commands = {}
    for method in args.methods:
        if selection[method]["lr"] is None:
            continue
        seeds = [0, 1, 2] if method == "dpo" else [0, 1]
        tuned = args.out / "tune" / f"{method}_x{selection[method]['mult']:g}" / "runs" / method
        reuse = args.out / "final" / f"{method}_seed0" / "runs" / method / "seed0"
        if not reuse.exists():  # seed 0 was trained in tuning: evaluate that run, do not retrain
            shutil.copytree(tuned / "seed0", reuse)
        for seed in seeds:
            commands[f"{method}_seed{seed}"] = leaderboard(
                args.out / "final" / f"{method}_seed{seed}",
                method,
                [seed],
                [*fit, f"{LR}={selection[method]['lr']:.6g}", *args.fit_args],
                ev,
                args.test_samples,
            )
    times = run_all(commands, args.out / "logs" / "final", args.parallel, args.start + args.budget)
    (args.out / "final_times.json").write_text(json.dumps(times, indent=1) + "\n")


def table(args) -> None:
    """Phase 4: gather the final results and rank them."""
    merged = args.out / "final" / "merged"
    (merged / "results").mkdir(parents=True, exist_ok=True)
    for job in sorted((args.out / "final").glob("*_seed*")):
        for path in (job / "results").glob("*.json"):
            shutil.copy(path, merged / "results" / path.name)
    command = [sys.executable, "-m", "lightning_pref", "leaderboard", "--table_only"]
    subprocess.run([*command, "--out", str(merged)], check=False)


def main() -> None:
    """Run the phases asked for."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    phases = ("tune", "merge", "select", "final", "table", "all")
    p.add_argument("--phase", choices=phases, default="all")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--mults", nargs="+", type=float, default=[1.0, 2.0, 0.5, 0.25])
    p.add_argument("--device", default="cuda")
    p.add_argument("--parallel", type=int, default=14)
    p.add_argument("--val_samples", type=int, default=256)
    p.add_argument("--test_samples", type=int, default=512)
    p.add_argument("--tune_budget", type=float, default=1e9, help="seconds from start for tuning")
    p.add_argument("--budget", type=float, default=1e9, help="seconds from start for everything")
    p.add_argument("--legs", nargs="*", type=Path, default=[], help="merge: folders of JSONs")
    p.add_argument("--fit_args", nargs="*", default=[], help="appended to every fit (a probe's)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.start = time.time()
    phases = ("tune", "select", "final", "table") if args.phase == "all" else (args.phase,)
    for phase in phases:
        start = time.perf_counter()
        globals()[phase](args)
        print(f"phase {phase}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
