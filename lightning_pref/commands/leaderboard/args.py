"""Arguments of ``python -m lightning_pref leaderboard`` and the checks made before any job runs.

With no ``--configs``, the leaderboard runs every MiniPick method's config,
``experiments/<method>_minipick.yaml``, found from the working directory (the repository root).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from lightning_pref.cli import RaisingArgumentParser
from lightning_pref.errors import ConfigError

__all__ = ["EXPERIMENTS", "MINIPICK_METHODS", "LeaderboardArgs", "parse_args"]

EXPERIMENTS = Path("experiments")  # relative to the working directory, as a user types it
MINIPICK_METHODS = (
    "dpo", "sft", "smpo", "inpo", "dspo", "mapo", "kto", "spo", "tailorpo", "tailorpo_g",
    "npo", "capo", "exo", "self_npo",
)  # fmt: skip
"""The default: every method's MiniPick config, ``experiments/<method>_minipick.yaml``."""
_OWN_EVAL_OPTIONS = ("--run", "--out", "--num_samples", "--seed")
_OWN_FIT_OPTIONS = ("--seed_everything", "--trainer.logger")  # they place the run


@dataclass(frozen=True)
class LeaderboardArgs:
    """Arguments of ``python -m lightning_pref leaderboard`` (see ``--help``)."""

    configs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    out: str = "results/leaderboard"
    num_samples: int = 512
    eval_seed: int = 0
    fit_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    force: bool = False
    table_only: bool = False


def _parser() -> argparse.ArgumentParser:
    p = RaisingArgumentParser(
        prog="python -m lightning_pref leaderboard",
        description="Train methods on fixed seeds, evaluate each against its base, rank them.",
    )
    p.add_argument(
        "--configs",
        nargs="+",
        default=[],
        help="experiment configs, one per method (default: every method's MiniPick config)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default 0)")
    p.add_argument("--out", default="results/leaderboard", help="output folder")
    p.add_argument("--num_samples", type=int, default=512, help="evaluation images per model")
    p.add_argument("--eval_seed", type=int, default=0, help="seed of the evaluation samples")
    p.add_argument(
        "--fit_args",
        default="",
        help="extra fit arguments as one string; write --fit_args='--x=1' for a single option",
    )
    p.add_argument(
        "--eval_args", default="", help="extra evaluate arguments, e.g. '--num_steps 10'"
    )
    p.add_argument("--force", action="store_true", help="rerun jobs whose results exist")
    p.add_argument(
        "--table_only", action="store_true", help="rebuild the table from existing results"
    )
    return p


def _split(option: str, value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as err:
        raise ConfigError(f"{option}: cannot split '{value}': {err}") from None


def _check_eval_args(eval_args: list[str]) -> None:
    """Reject options the leaderboard sets itself, and parse the rest as ``evaluate`` would."""
    from lightning_pref.evaluation.args import parse_evaluate_args

    own = [a for a in eval_args if a.split("=")[0] in _OWN_EVAL_OPTIONS]
    if own:
        raise ConfigError(f"--eval_args: {own[0]} is set by the leaderboard; drop it")
    try:
        parse_evaluate_args(["--run", "unused", *eval_args])
    except argparse.ArgumentError as err:
        raise ConfigError(f"--eval_args: {str(err).strip().splitlines()[0]}") from None


def parse_args(argv: list[str]) -> LeaderboardArgs:
    """Parse and check the arguments; errors raise ``ArgumentError`` or ``ConfigError``."""
    ns = _parser().parse_args(argv)
    configs = list(ns.configs)
    if not configs and not ns.table_only:  # the table alone reads whatever results exist
        if not EXPERIMENTS.is_dir():
            raise ConfigError(
                f"no '{EXPERIMENTS}' folder here: run from the repository root, or pass --configs"
            )
        configs = [str(EXPERIMENTS / f"{method}_minipick.yaml") for method in MINIPICK_METHODS]
    args = LeaderboardArgs(
        configs=configs,
        seeds=list(ns.seeds),
        out=ns.out,
        num_samples=ns.num_samples,
        eval_seed=ns.eval_seed,
        fit_args=_split("--fit_args", ns.fit_args),
        eval_args=_split("--eval_args", ns.eval_args),
        force=ns.force,
        table_only=ns.table_only,
    )
    if not args.seeds:
        raise ConfigError("pass at least one seed with --seeds")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds repeats a seed: {args.seeds}")
    if args.num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {args.num_samples}")
    missing = [c for c in args.configs if not Path(c).is_file()]
    if missing:
        raise ConfigError(f"config '{missing[0]}' does not exist")
    own = [a for a in args.fit_args if a.split("=")[0].startswith(_OWN_FIT_OPTIONS)]
    if own:
        raise ConfigError(f"--fit_args: {own[0]} is set by the leaderboard; drop it")
    if not args.table_only:
        _check_eval_args(args.eval_args)
    return args
