"""The training command line: ``python -m lightning_pref {fit,validate,test} --config X.yaml``.

:class:`PreferenceCLI` is LightningCLI with our trainer defaults; :func:`run_reporting_errors` turns
user errors into one ``error: ...`` line for every subcommand (the table of subcommands is in
:mod:`lightning_pref.__main__`).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from jsonargparse import ArgumentParser, lazy_instance
from lightning import LightningDataModule
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_pref.callbacks.checkpoint import LastCheckpoint
from lightning_pref.callbacks.preemption import Preempted, Preemption
from lightning_pref.callbacks.progress import StepProgressBar
from lightning_pref.callbacks.run_summary import RunSummary
from lightning_pref.errors import ConfigError, user_error
from lightning_pref.models.files import check_checkpoint_file
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.training.resume import check_resume, resolve_last_checkpoint

__all__ = [
    "PreferenceCLI",
    "RaisingArgumentParser",
    "condense_parse_error",
    "dataclass_parser",
    "main",
    "parse_dataclass",
    "run_reporting_errors",
]


T = TypeVar("T")


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

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning opens it (to read its hyperparameters).

        A missing, truncated or random file ends with one line instead of torch's traceback.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "last", "best", "hpc", "registry"):
            if not Path(ckpt_path).exists():
                raise ConfigError(f"--ckpt_path '{ckpt_path}' does not exist")
            check_checkpoint_file(ckpt_path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: the newest readable checkpoint of this run's logger folder."""
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path") == "last":
            resolve_last_checkpoint(self.config["fit"])

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a configuration error Lightning raises after parsing becomes a ConfigError.

        First, a ``--ckpt_path`` that this strategy and number of ranks cannot restore (written by
        another strategy or on another number of ranks) stops with one line
        (:func:`~lightning_pref.training.resume.check_resume`).
        """
        ckpt_path = self._get(self.config_init, "ckpt_path")
        check_resume(ckpt_path, self.trainer.strategy, self.trainer.world_size, subcommand)
        try:
            super()._run_subcommand(subcommand)
        except (MisconfigurationException, ValueError) as err:
            if not _raised_by_lightning(err):
                raise
            raise ConfigError(" ".join(str(err).split())) from err

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


class RaisingArgumentParser(argparse.ArgumentParser):
    """An argparse parser that raises ``ArgumentError`` (printed as one line by the CLI)."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage and exiting."""
        raise argparse.ArgumentError(None, message)


def dataclass_parser(cls: type, prog: str, config_file: bool = False) -> ArgumentParser:
    """The parser of a subcommand whose arguments are the typed dataclass ``cls``.

    ``--help`` comes from the dataclass's fields and its docstring's ``Attributes:``;
    ``config_file`` adds ``--config`` (a YAML file of these arguments). Errors raise
    ``ArgumentError``.
    """
    parser = ArgumentParser(prog=prog, exit_on_error=False)
    if config_file:
        parser.add_argument("--config", action="config", help="a YAML file of these arguments")
    parser.add_class_arguments(cls, as_group=False)
    return parser


def parse_dataclass(cls: type[T], argv: list[str], prog: str, config_file: bool = False) -> T:
    """Parse ``argv`` into ``cls`` (:func:`dataclass_parser`).

    Class-typed fields (a ``Scorer``, given by ``class_path``) are instantiated.
    """
    parser = dataclass_parser(cls, prog, config_file)
    config = vars(parser.instantiate(parser.parse_args(argv)))
    return cls(**{f.name: config[f.name] for f in fields(cls)})  # type: ignore[call-arg]


def _raised_by_lightning(err: BaseException) -> bool:
    """True when the innermost frame of ``err`` is Lightning's own code (its trainer checks)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).parts if tb is not None else ()
    return "lightning" in path and "pytorch" in path


def _quiet_known_warnings() -> None:
    # frozen VAE/text encoder/reference are in eval mode on purpose
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


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


def run_reporting_errors(command: Callable[[], object]) -> None:
    """Run a subcommand; a user error ends with one ``error: ...`` line and exit code 2.

    A preemption exits with ``128 + signal`` so SLURM requeues the job.
    """
    _quiet_known_warnings()
    try:
        command()
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
        error = user_error(err)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(args: list[str] | None = None) -> None:
    """``fit``, ``validate`` or ``test``: :class:`PreferenceCLI` with one-line user errors."""
    run_reporting_errors(lambda: PreferenceCLI(args=args))
