"""Training runs: find and load them, and evaluate them from the command line.

A run folder is what ``python -m lightning_pref fit`` writes (``runs/NAME/version_N``): the fully
resolved ``config.yaml`` saved by LightningCLI and ``checkpoints/last.ckpt``. Models are rebuilt
from the config exactly as the CLI builds them (same parser, same seeding), then the checkpoint's
trainable weights are loaded with ``weights_only=True``, so opening a checkpoint never runs code.

``python -m lightning_pref evaluate --run runs/NAME/version_N`` (:func:`evaluate_run`) compares
the run's checkpoint with the model it started from using :mod:`lightning_pref.evaluation`, and
writes ``report.json``, ``grid.png`` (+ ``grid.txt``) and TensorBoard events to
``<run>/eval_seed<seed>``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_pref.callbacks.ema import ema_state_from_checkpoint
from lightning_pref.cli import PreferenceCLI
from lightning_pref.data.pickapic import PickAPicDataModule
from lightning_pref.errors import ConfigError, DataError, ModelLoadError
from lightning_pref.evaluation import (
    EvalReport,
    GoldScorer,
    default_scorers,
    evaluate_policies,
    implicit_accuracy,
    sample_plan,
    sample_seeded,
    save_grid,
)
from lightning_pref.minipick import prompts as minipick_prompts
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.scoring import Scorer

__all__ = [
    "EvaluateArgs",
    "EvalSetup",
    "RunPaths",
    "evaluate_run",
    "find_run",
    "load_datamodule",
    "load_module",
    "prepare_evaluation",
    "read_prompts",
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
    """``last.ckpt`` if present, else the most recently written ``*.ckpt``, else None."""
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


def find_run(path: str | Path) -> RunPaths:
    """Find the config and checkpoint of a run from its version folder or a checkpoint file.

    Args:
        path: ``runs/NAME/version_N`` (uses ``checkpoints/last.ckpt``, else the newest ``.ckpt``
            there, else no checkpoint), ``runs/NAME`` (its newest version with a checkpoint) or a
            ``.ckpt`` file inside a run's ``checkpoints/``.

    Returns:
        The run's ``config.yaml`` and checkpoint.

    Raises:
        ConfigError: if the path or the run's ``config.yaml`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"run path '{path}' does not exist; pass runs/NAME/version_N or a .ckpt")
    if path.is_file():
        if path.suffix != ".ckpt":
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


class _BuildCLI(PreferenceCLI):
    """The training CLI that builds model and data but no trainer."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Build nothing: evaluation drives the models itself."""
        return None


def _build(config_path: str | Path) -> _BuildCLI:
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
            return _BuildCLI(args=args, run=False)
        finally:
            seed_logger.setLevel(level)


def _read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (tensors and plain containers only)."""
    if not ckpt_path.is_file():
        raise ConfigError(f"checkpoint '{ckpt_path}' does not exist")
    try:
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except Exception as err:  # UnpicklingError for unsafe objects, RuntimeError for a torn file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load checkpoint '{ckpt_path}' safely: {first}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelLoadError(f"'{ckpt_path}' is not a Lightning checkpoint (no state_dict)")
    return checkpoint


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
        ckpt_path: a checkpoint of that run; None for the base model.
        ema: load the checkpoint's EMA weights (:class:`~lightning_pref.callbacks.EMA`) instead.

    Returns:
        The module in eval mode, on the CPU.

    Raises:
        ConfigError: if a file is missing or the checkpoint does not match the model.
        ModelLoadError: if the checkpoint cannot be read safely.
    """
    module = _build(config_path).model
    if not isinstance(module, PreferenceModule):
        raise ConfigError(f"the model of '{config_path}' is not a PreferenceModule")
    module.configure_model()
    if ckpt_path is not None:
        checkpoint = _read_checkpoint(Path(ckpt_path))
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
    return _build(config_path).datamodule


def run_val_loader(
    config_path: str | Path, val_files: str | list[str] | None = None, resolution: int = 512
) -> DataLoader | None:
    """Validation pairs for a run: ``val_files``, else the run's own validation data, else None.

    ``val_files`` are read with the run's data settings (resolution, batch size) when its data
    module is a :class:`PickAPicDataModule`, else at ``resolution``. A failure to read the run's
    own validation data prints a note and returns None; a failure on ``val_files`` raises.
    """
    data = load_datamodule(config_path)
    if val_files is not None:
        if not isinstance(data, PickAPicDataModule):
            data = PickAPicDataModule(resolution=resolution, batch_size=8)
        data.val_files = val_files
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


def _minipick_val_pairs(config_path: Path, policy: DiffusionPolicy) -> str | None:
    """MiniPick's validation pairs for a MiniPick run trained without pairs (on-policy methods)."""
    from lightning_pref.minipick.policy import MiniPickPolicy

    if not isinstance(policy, MiniPickPolicy):
        return None
    if isinstance(load_datamodule(config_path), PickAPicDataModule):
        return None  # the run's own validation pairs
    return str(policy.assets.pairs_dir(build=True) / "validation")


def read_prompts(path: str | Path | None) -> list[str]:
    """Prompts from a file (a JSON list, or one per line), or MiniPick's held-out test prompts."""
    if path is None:
        return minipick_prompts("test")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prompts file '{path}' does not exist")
    text = path.read_text()
    entries: Any = text.splitlines()
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"prompts file '{path}' is not valid JSON: {err}") from err
    if not isinstance(entries, list) or not all(isinstance(p, str) for p in entries):
        raise DataError(f"prompts file '{path}' must hold a JSON list of strings")
    prompts = [p.strip() for p in entries if p.strip()]
    if not prompts:
        raise DataError(f"prompts file '{path}' holds no prompt")
    return prompts


@dataclass
class EvaluateArgs:
    """Compare a tuned run with its base model (``python -m lightning_pref evaluate``).

    Attributes:
        run: the tuned run: a version folder (runs/NAME/version_N; uses checkpoints/last.ckpt) or
            a .ckpt file.
        baseline: 'base' (the run's config without checkpoint), or a run folder or .ckpt.
        prompts: file with one prompt per line or a JSON list; default MiniPick's test prompts.
        num_samples: images per model; prompts are cycled.
        seed: seed of every draw; sample i is seeded by (seed, i).
        num_steps: DDIM steps.
        guidance_scale: classifier-free guidance weight.
        eta: DDIM eta (0: deterministic).
        scorers: scorers by name, as '{"NAME": {"class_path": ..., "init_args": {...}}}';
            default: MiniPick's gold rater as ``gold``, plus ``proxy`` (MiniPickScore) for
            MiniPick runs.
        gold: the scorer that decides wins.
        val_files: validation pairs (parquet files, globs or folders) for the implicit accuracy;
            default the run's own validation data, if any.
        implicit_draws: timestep/noise draws per validation pair; 0 skips the implicit accuracy.
        diversity_samples: images per prompt for the diversity score; < 2 skips it.
        out: output folder; default <run folder>/eval_seed<seed>.
        batch_size: images per sampling batch.
        device: 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...
        ema: evaluate the run's EMA weights (saved by the ``EMA`` callback).
    """

    run: str
    baseline: str = "base"
    prompts: str | None = None
    num_samples: int = 512
    seed: int = 0
    num_steps: int = 10
    guidance_scale: float = 5.0
    eta: float = 0.0
    scorers: dict[str, Scorer] | None = None
    gold: str = "gold"
    val_files: str | None = None
    implicit_draws: int = 4
    diversity_samples: int = 4
    out: str | None = None
    batch_size: int = 64
    device: str = "auto"
    ema: bool = False


def _parse(argv: list[str]) -> EvaluateArgs:
    """Parse ``evaluate``'s arguments (``--config`` YAML too); errors raise ``ArgumentError``."""
    parser = ArgumentParser(prog="python -m lightning_pref evaluate", exit_on_error=False)
    parser.add_argument("--config", action="config", help="a YAML file of these arguments")
    parser.add_class_arguments(EvaluateArgs, as_group=False)
    config = vars(parser.instantiate(parser.parse_args(argv)))
    return EvaluateArgs(**{f.name: config[f.name] for f in fields(EvaluateArgs)})


def _load_for_eval(
    config: Path, ckpt: Path | None, device: torch.device, ema: bool = False
) -> PreferenceModule:
    """A run's module on ``device`` without its frozen reference (evaluation brings its own)."""
    module = load_module(config, ckpt, ema)
    module.reference_unet = None
    return module.to(device)


def _image_size(policy: DiffusionPolicy) -> int:
    """Side of the images the policy generates (the VAE halves the size once per extra block)."""
    size = int(policy.unet.config.sample_size)
    if policy.vae is None:
        return size
    return size * 2 ** (len(policy.vae.config.block_out_channels) - 1)


def _log_to_tensorboard(log_dir: Path, report: EvalReport, grid: Tensor) -> None:
    """Write the grid, the report table and the headline numbers as TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_image("eval/grid", grid, 0, dataformats="CHW")
        writer.add_text("eval/report", report.to_markdown_table(), 0)
        writer.add_scalar("eval/win_rate", report.win_rate, 0)
        for name, stats in report.scores.items():
            writer.add_scalar(f"eval/{name}_base", stats.base_mean, 0)
            writer.add_scalar(f"eval/{name}_tuned", stats.tuned_mean, 0)
        if report.implicit_acc is not None:
            writer.add_scalar("eval/implicit_acc", report.implicit_acc, 0)
    finally:
        writer.close()


@dataclass
class EvalSetup:
    """A run and its baseline loaded for evaluation (shared by ``evaluate`` and the leaderboard)."""

    run: RunPaths
    base_ckpt: Path | None
    prompts: list[str]
    tuned: PreferenceModule
    base: PreferenceModule
    loader: Any  # validation pairs for implicit accuracy, or None
    scorers: dict[str, Scorer]

    def finish(self, report: EvalReport, args: EvaluateArgs) -> EvalReport:
        """Add implicit accuracy (if asked for) and the names of what was compared."""
        if self.loader is not None:
            acc = implicit_accuracy(
                self.tuned, self.base.policy, self.loader, args.seed, args.implicit_draws
            )
            report = replace(report, implicit_acc=acc)
        baseline = str(self.base_ckpt or "base (no checkpoint)")
        return replace(report, tuned=str(self.run.ckpt), baseline=baseline)


def prepare_evaluation(args: EvaluateArgs) -> EvalSetup:
    """Find the run and baseline, load both models, the validation pairs and the scorers."""
    run = find_run(args.run)
    if run.ckpt is None:
        raise ConfigError(f"run '{run.config.parent}' has no checkpoint; pass a .ckpt with --run")
    base_run = run if args.baseline == "base" else find_run(args.baseline)
    base_ckpt = None if args.baseline == "base" else base_run.ckpt
    prompts = read_prompts(args.prompts)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    tuned = _load_for_eval(run.config, run.ckpt, device, args.ema)
    base = _load_for_eval(base_run.config, base_ckpt, device)
    loader = None  # read before sampling, so a wrong --val_files fails at once
    if args.implicit_draws > 0:
        val_files = args.val_files or _minipick_val_pairs(run.config, tuned.policy)
        loader = run_val_loader(run.config, val_files, _image_size(tuned.policy))
    chosen = args.scorers or default_scorers(tuned.policy)
    if isinstance(chosen.get(args.gold), GoldScorer):
        GoldScorer.check_captions(prompts)  # before any sampling
    scorers = {k: s.to(device) for k, s in chosen.items()}
    return EvalSetup(run, base_ckpt, prompts, tuned, base, loader, scorers)


def evaluate_run(argv: list[str]) -> EvalReport:
    """``python -m lightning_pref evaluate``: print the table; write report.json, grid, events.

    Args:
        argv: the arguments after ``evaluate`` (see :class:`EvaluateArgs` or ``--help``).
    """
    args = _parse(argv)
    setup = prepare_evaluation(args)
    run, prompts, tuned, base = setup.run, setup.prompts, setup.tuned, setup.base
    sampling = {"num_steps": args.num_steps, "guidance_scale": args.guidance_scale, "eta": args.eta}
    report = evaluate_policies(
        base.policy,
        tuned.policy,
        prompts,
        setup.scorers,
        args.gold,
        args.num_samples,
        args.seed,
        batch_size=args.batch_size,
        samples_per_prompt_for_diversity=args.diversity_samples,
        **sampling,
    )
    report = setup.finish(report, args)
    out = Path(args.out) if args.out else run.config.parent / f"eval_seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json() + "\n")
    captions, seeds = sample_plan(prompts, min(8, args.num_samples), args.seed)  # = the first 8
    grid = [sample_seeded(m.policy, captions, seeds, **sampling) for m in (base, tuned)]
    _log_to_tensorboard(out, report, save_grid(*grid, captions, out / "grid.png"))
    print(report.to_markdown_table())
    return report
