"""Command line: ``python -m lightning_pref {fit,validate,test} --config X.yaml``.

Plus non-Trainer subcommands: ``bench`` (:mod:`lightning_pref.bench`), ``evaluate``
(:mod:`lightning_pref.runs`), ``score-pairs`` (:func:`lightning_pref.data.scored.score_pairs_main`),
``cache-latents`` (:mod:`lightning_pref.cache_latents`), ``leaderboard``
(:mod:`lightning_pref.leaderboard`), ``sweep`` (:mod:`lightning_pref.sweep`), ``export``
(:mod:`lightning_pref.export`) and ``minipick-base`` (:mod:`lightning_pref.minipick.base_weights`).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Any

from jsonargparse import lazy_instance
from lightning import LightningDataModule
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_pref.callbacks.checkpoint import LastCheckpoint
from lightning_pref.callbacks.preemption import Preempted, Preemption
from lightning_pref.callbacks.progress import StepProgressBar
from lightning_pref.callbacks.run_summary import RunSummary
from lightning_pref.errors import LightningPrefError
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.resume import resolve_last_checkpoint

__all__ = ["PreferenceCLI", "main"]


def trainer_defaults() -> dict[str, Any]:
    """Defaults under every config.

    TensorBoard in ``runs/``, a ``last.ckpt`` that holds the final step, a checkpoint-and-stop on
    SIGUSR1/SIGTERM (and a requeue under SLURM) and ``metrics.json`` in the run folder.
    """
    return {
        "logger": lazy_instance(TensorBoardLogger, save_dir="runs", name="default"),
        # appended to the config's callbacks as they are, so a fresh instance per CLI run
        "callbacks": [LastCheckpoint(), Preemption(), RunSummary()],
        # our samplers shard across ranks themselves and keep their position for exact resume
        "use_distributed_sampler": False,
    }


class PreferenceCLI(LightningCLI):
    """LightningCLI with model and data in subclass mode and OmegaConf interpolation.

    Parser mode ``omegaconf+`` resolves ``${..}`` interpolations once all files and overrides are
    read, so ``--model.init_args.x 3`` flows into every value that refers to it. Use relative keys
    (``${..model.init_args.x}``); absolute ones must carry the subcommand (``${fit.model...}``).
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", trainer_defaults())
        super().__init__(
            model_class=PreferenceModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: the newest checkpoint of this run's logger folder, or none."""
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path") == "last":
            resolve_last_checkpoint(self.config["fit"])

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add :class:`StepProgressBar` unless the bar is off or the config brings its own."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        own_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if config.get("enable_progress_bar") is not False and not own_bar:
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [*defaults, StepProgressBar()],
            }
        return super().instantiate_trainer(**kwargs)


def _quiet_known_warnings() -> None:
    # frozen VAE/text encoder/reference are in eval mode on purpose
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _user_error(err: BaseException) -> LightningPrefError | None:
    """The LightningPrefError behind ``err`` (jsonargparse and Lightning wrap what they catch)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LightningPrefError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_NOISE = (
    "Does not validate",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def condense_parse_error(message: str) -> str:
    """Turn jsonargparse's nested union report into ``key.path (Class): complaint``."""
    stack: list[tuple[int, str]] = []
    for line in message.splitlines():
        indent, text = len(line) - len(line.lstrip(" -")), line.strip(" -")
        if not text or text.startswith(_NOISE):
            continue
        stack = [(i, t) for i, t in stack if i < indent]
        key = re.match(r'(?:Parser key|Key) "([^"]+)"', text)
        cls = re.match(r"Problem with given class_path '([^']+)'", text)
        if key:
            stack.append((indent, key.group(1)))
        elif cls:
            stack.append((indent, f"({cls.group(1)})"))
        else:
            path = ".".join(t for _, t in stack if not t.startswith("("))
            classes = [t for _, t in stack if t.startswith("(")]
            where = f"{path} {classes[-1]}" if classes else path
            return f"{where}: {text}" if where else text
    return message.strip().splitlines()[0]


def main(args: list[str] | None = None) -> None:
    """Run the CLI; user errors end with one ``error: ...`` line and exit code 2."""
    _quiet_known_warnings()
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] == "evaluate":  # not a Trainer subcommand: lightning_pref.runs
            from lightning_pref.evaluation import evaluate_main

            evaluate_main(list(argv[1:]))
            return
        if argv and argv[0] == "leaderboard":  # runs fit subprocesses: lightning_pref.leaderboard
            from lightning_pref.leaderboard import leaderboard_main

            leaderboard_main(list(argv[1:]))
            return
        if argv and argv[0] == "minipick-base":  # rebuild MiniPick's committed base model
            from lightning_pref.minipick.base_weights import minipick_base_main

            minipick_base_main(list(argv[1:]))
            return
        if argv and argv[0] == "bench":  # training (3 paths) and on-policy throughput
            from lightning_pref.bench import bench_main

            bench_main(list(argv[1:]))
            return
        if argv and argv[0] == "sweep":  # grid x seeds of fit runs: lightning_pref.sweep
            from lightning_pref.sweep import sweep_main

            sweep_main(list(argv[1:]))
            return
        if argv and argv[0] == "export":  # to diffusers pipeline/LoRA: lightning_pref.export
            from lightning_pref.export import export_main

            export_main(list(argv[1:]))
            return
        if argv and argv[0] == "cache-latents":  # encode pairs once: lightning_pref.cache_latents
            from lightning_pref.cache_latents import cache_latents_main

            cache_latents_main(list(argv[1:]))
            return
        if argv and argv[0] == "score-pairs":  # offline scoring for ScoreLabels (SmPO)
            from lightning_pref.data.scored import score_pairs_main

            score_pairs_main(list(argv[1:]))
            return
        PreferenceCLI(args=args)
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except argparse.ArgumentError as err:
        print(
            f"error: {condense_parse_error(str(err))} (see --help or --print_config)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
