"""Training runs: find them and load their models (the commands that read runs build on this).

A run folder is what ``python -m lightning_pref fit`` writes (``runs/NAME/version_N``): the fully
resolved ``config.yaml`` saved by LightningCLI and ``checkpoints/last.ckpt`` (a file, or a folder
under FSDP and DeepSpeed). Models are rebuilt from the config exactly as the CLI builds them (same
parser, same seeding), then the checkpoint's trainable weights are loaded by
:func:`~lightning_pref.training.checkpoints.read_checkpoint`, which reads files and FSDP and
DeepSpeed folders alike, safely (tensors and plain data only), so opening one never runs code.

``python -m lightning_pref evaluate --run runs/NAME/version_N`` loads runs through these functions
(:mod:`lightning_pref.evaluation.setup`). This module imports no command.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from lightning_pref.callbacks.ema import ema_state_from_checkpoint
from lightning_pref.cli import PreferenceCLI
from lightning_pref.data.pickapic import PickAPicDataModule
from lightning_pref.errors import ConfigError, DataError
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.training.checkpoints import is_checkpoint_folder, read_checkpoint

__all__ = [
    "RunPaths",
    "build_from_config",
    "find_run",
    "load_datamodule",
    "load_module",
    "run_val_loader",
]


# Top-level keys of a saved ``fit``/``validate``/``test`` config that belong to the subcommand or
# the trainer; the model and data are rebuilt without them, so no trainer, logger or strategy is
# created (a config written for 16 GPUs still loads on a laptop).
_KEPT_KEYS = ("seed_everything", "model", "data")


@dataclass(frozen=True)
class RunPaths:
    """The files of one training run."""

    config: Path  # the config.yaml LightningCLI saved for the run
    ckpt: Path | None  # the checkpoint to load; None: the run's untrained (base) model


def _latest_checkpoint(folder: Path) -> Path | None:
    """``last.ckpt`` if present, else the most recently written ``*.ckpt``, else None.

    A checkpoint is a file, or a folder under FSDP and DeepSpeed.
    """
    if (folder / "last.ckpt").exists():
        return folder / "last.ckpt"
    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


def find_run(path: str | Path) -> RunPaths:
    """Find the config and checkpoint of a run from its version folder or a checkpoint file.

    Args:
        path: ``runs/NAME/version_N`` (uses ``checkpoints/last.ckpt``, else the newest ``.ckpt``
            there, else no checkpoint), ``runs/NAME`` (its newest version with a checkpoint) or a
            ``.ckpt`` file, or FSDP/DeepSpeed checkpoint folder, inside a run's ``checkpoints/``.

    Returns:
        The run's ``config.yaml`` and checkpoint.

    Raises:
        ConfigError: if the path or the run's ``config.yaml`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"run path '{path}' does not exist; pass runs/NAME/version_N or a .ckpt")
    if path.is_file() or is_checkpoint_folder(path):
        if path.is_file() and path.suffix != ".ckpt":
            raise ConfigError(f"'{path}' is not a .ckpt file or a run folder (runs/NAME/version_N)")
        config = path.parent.parent / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"no config.yaml next to the checkpoint's folder: '{config}' missing")
        return RunPaths(config.resolve(), path.resolve())
    config = path / "config.yaml"
    if not config.is_file():
        versions = sorted(
            (p for p in path.glob("version_*") if p.name[8:].isdigit() and p.is_dir()),
            key=lambda p: int(p.name[8:]),
        )
        finished = [v for v in versions if (v / "config.yaml").is_file()]
        finished = [v for v in finished if _latest_checkpoint(v / "checkpoints") is not None]
        if not finished:
            raise ConfigError(
                f"'{path}' is not a run folder and holds no version_N with a checkpoint"
            )
        path, config = finished[-1], finished[-1] / "config.yaml"
    ckpt = _latest_checkpoint(path / "checkpoints")
    return RunPaths(config.resolve(), ckpt.resolve() if ckpt is not None else None)


class BuildCLI(PreferenceCLI):
    """The training CLI that builds model and data but no trainer."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Build nothing: evaluation drives the models itself."""
        return None


def build_from_config(config_path: str | Path) -> BuildCLI:
    """Parse a saved run config and instantiate its model and data module as ``fit`` would."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise ConfigError(f"run config '{config_path}' does not exist")
    saved = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(saved, dict) or "model" not in saved:
        raise ConfigError(f"'{config_path}' is not a run config saved by LightningCLI (no model)")
    args = {k: saved[k] for k in _KEPT_KEYS if k in saved}
    seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_logger.level
    with warnings.catch_warnings():  # "args ... and command line arguments": argv is evaluate's
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        seed_logger.setLevel(logging.WARNING)  # "Seed set to N" once per model loaded
        try:
            return BuildCLI(args=args, run=False)
        finally:
            seed_logger.setLevel(level)


def load_module(
    config_path: str | Path, ckpt_path: str | Path | None = None, ema: bool = False
) -> PreferenceModule:
    """Rebuild a run's LightningModule from its config and, optionally, its checkpoint.

    The module is built as the CLI builds it, its models are loaded by ``configure_model()``
    (which also makes a ``copy`` reference from the initial weights), then the checkpoint's
    trainable weights replace the initial ones after the module's own key check
    (``on_load_checkpoint``). Without a checkpoint this is the model the run started from.

    Args:
        config_path: the run's ``config.yaml``.
        ckpt_path: a checkpoint of that run (a file, or an FSDP or DeepSpeed folder); None for
            the base model.
        ema: load the checkpoint's EMA weights (:class:`~lightning_pref.callbacks.EMA`) instead.

    Returns:
        The module in eval mode, on the CPU.

    Raises:
        ConfigError: if a file is missing or the checkpoint does not match the model.
        ModelLoadError: if the checkpoint cannot be read safely.
    """
    module = build_from_config(config_path).model
    if not isinstance(module, PreferenceModule):
        raise ConfigError(f"the model of '{config_path}' is not a PreferenceModule")
    module.configure_model()
    if ckpt_path is not None:
        checkpoint = read_checkpoint(ckpt_path)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=False)
        if ema:
            averaged = ema_state_from_checkpoint(checkpoint)
            if averaged is None:
                raise ConfigError(f"'{ckpt_path}' holds no EMA weights (train with callbacks.EMA)")
            module.load_state_dict(averaged, strict=False)
    return module.eval()


def load_datamodule(config_path: str | Path) -> LightningDataModule | None:
    """The run's data module as configured (nothing is read until ``setup``), or None."""
    return build_from_config(config_path).datamodule


def run_val_loader(
    config_path: str | Path, val_files: str | list[str] | None = None, resolution: int = 512
) -> DataLoader | None:
    """Validation pairs for a run: ``val_files``, else the run's own validation data, else None.

    ``val_files`` are read with the run's data settings (resolution, batch size) when its data
    module is a :class:`PickAPicDataModule`, else at ``resolution``; they are read as v2 shards
    with image bytes even if the run read the ``no_images`` layout. A failure to read the run's
    own validation data prints a note and returns None; a failure on ``val_files`` raises.
    """
    data = load_datamodule(config_path)
    if val_files is not None:
        if not isinstance(data, PickAPicDataModule):
            data = PickAPicDataModule(resolution=resolution, batch_size=8)
        data.val_files = val_files
        data.image_root = None  # --val_files are Pick-a-Pic v2 shards with their image bytes
    elif not isinstance(data, PickAPicDataModule) or not (data.val_files or data.dataset_name):
        return None
    try:
        data.setup("validate")
    except DataError as err:
        if val_files is not None:
            raise
        print(f"note: skipping the implicit accuracy: {err}", file=sys.stderr)
        return None
    loader = data.val_dataloader()
    return loader if isinstance(loader, DataLoader) else None
