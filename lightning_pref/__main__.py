"""``python -m lightning_pref SUBCOMMAND``: one table of subcommands.

``fit``, ``validate`` and ``test`` are LightningCLI's (:mod:`lightning_pref.cli`); every other
subcommand is a module of :mod:`lightning_pref.commands` with a ``main(argv)``, imported only when
it runs. Every subcommand prints a user error as one ``error: ...`` line (exit code 2).
"""

from __future__ import annotations

import importlib
import sys

from lightning_pref.cli import PreferenceCLI, run_reporting_errors

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {  # name: (module, what it does)
    "evaluate": ("lightning_pref.commands.evaluate", "compare a run with its base model"),
    "export": ("lightning_pref.commands.export", "write a diffusers pipeline or LoRA file"),
    "cache-latents": ("lightning_pref.commands.cache_latents", "encode a run's pairs once"),
    "score-pairs": ("lightning_pref.commands.score_pairs", "score pairs for ScoreLabels"),
    "leaderboard": ("lightning_pref.commands.leaderboard.run", "every MiniPick method, evaluated"),
    "sweep": ("lightning_pref.commands.sweep.run", "a grid x seeds of fit runs, local or SLURM"),
    "bench": ("lightning_pref.commands.bench.run", "training and on-policy throughput"),
    "minipick-base": ("lightning_pref.commands.minipick_base", "rebuild MiniPick's base model"),
}


def _usage() -> str:
    lines = ["subcommands other than fit, validate and test (each has --help):"]
    lines += [f"  {name:<14} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its subcommand."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in COMMANDS:
        command = importlib.import_module(COMMANDS[args[0]][0])
        run_reporting_errors(lambda: command.main(args[1:]))
        return
    if not args or args[0] in ("-h", "--help"):
        print(_usage() + "\n")
    run_reporting_errors(lambda: PreferenceCLI(args=argv))  # None: LightningCLI reads sys.argv


if __name__ == "__main__":
    main()
