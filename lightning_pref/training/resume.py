"""``fit --ckpt_path last``: find the newest checkpoint of a run and keep logging into its folder.

Lightning's own ``ckpt_path="last"`` looks in the checkpoint folder of the *new* logger version
(``version_N+1``), which is empty, so it warns and starts from scratch. Here ``last`` means: in
the logger's ``<save_dir>/<name>``, the newest ``version_*`` (or the one the config pins) whose
``checkpoints/`` holds a checkpoint; the run resumes from its newest checkpoint (normally
``last.ckpt``) and logs into that same version folder. With nothing to resume it starts fresh and
says so, which is what a requeued or re-launched sweep job wants.

:func:`check_resume` stops, in one line, a ``--ckpt_path`` that the run's strategy cannot restore
exactly: a sharded checkpoint (FSDP, DeepSpeed) resumes only under the strategy that wrote it on
the same number of ranks (DeepSpeed: the same ZeRO stage too), a file that FSDP wrote only under
FSDP, and any other file only without a sharding strategy (single device, DDP).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.training.checkpoints import CheckpointInfo, checkpoint_info

__all__ = ["check_resume", "find_last_checkpoint", "resolve_last_checkpoint"]

log = logging.getLogger(__name__)


def _newest_checkpoint(folder: Path) -> Path | None:
    """The most recently written readable ``*.ckpt``, ``last.ckpt`` winning ties.

    A checkpoint is a file, or a folder of shards under FSDP and DeepSpeed. An unreadable one
    (truncated by a crash during the save, overwritten, or a folder without its index) is skipped
    with a message naming it, so the run resumes from the newest checkpoint that can be read and
    loses nothing older.
    """
    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    for ckpt in reversed(ckpts):
        try:
            checkpoint_info(ckpt)
        except (ConfigError, ModelLoadError) as err:
            log.warning("--ckpt_path last: skipping %s", err)
            print(f"--ckpt_path last: skipping {err}")
            continue
        return ckpt
    return None


def _version_number(path: Path) -> int:
    suffix = path.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def find_last_checkpoint(run_root: Path, version: int | str | None) -> tuple[Path, str] | None:
    """The checkpoint to resume and its version folder name under ``run_root``, or None.

    Args:
        run_root: ``<save_dir>/<name>`` of a TensorBoard/CSV logger.
        version: the pinned version (``0``, ``"v2"``); None: the newest one with a checkpoint.
    """
    if version is not None:
        name = f"version_{version}" if isinstance(version, int) else str(version)
        candidates = [run_root / name]
    else:
        candidates = sorted(run_root.glob("version_*"), key=_version_number, reverse=True)
    for folder in candidates:
        ckpt = _newest_checkpoint(folder / "checkpoints")
        if ckpt is not None:
            return ckpt, folder.name
    return None


def resolve_last_checkpoint(config: Any) -> None:
    """Rewrite ``config.ckpt_path == "last"`` in a parsed ``fit`` config (in place).

    Sets ``ckpt_path`` to the checkpoint found and pins the logger's ``version`` to its folder, or
    sets ``ckpt_path`` to None (start fresh) when there is nothing to resume.
    """
    logger = config.trainer.get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is not None and hasattr(init_args, "save_dir"):
        name = init_args.get("name") or ""
        run_root = Path(init_args.save_dir) / name
        found = find_last_checkpoint(run_root, init_args.get("version"))
    else:  # no logger config: Lightning's default folder layout
        run_root = Path(config.trainer.get("default_root_dir") or ".")
        ckpt = _newest_checkpoint(run_root / "checkpoints")
        found = (ckpt, "") if ckpt is not None else None
    if found is None:
        log.warning("--ckpt_path last: no checkpoint under %s; starting from scratch", run_root)
        print(f"--ckpt_path last: no checkpoint under {run_root}; starting from scratch")
        config.ckpt_path = None
        return
    ckpt, version = found
    if init_args is not None and version:
        init_args.version = int(version[8:]) if version[8:].isdigit() else version
    print(f"--ckpt_path last: resuming from {ckpt}")
    config.ckpt_path = str(ckpt)


def _running(strategy: Strategy) -> tuple[str, int | None]:
    """The checkpoint kind ``strategy`` writes and reads, and its ZeRO stage under DeepSpeed."""
    if isinstance(strategy, FSDPStrategy):
        return "fsdp", None
    if isinstance(strategy, DeepSpeedStrategy):
        return "deepspeed", strategy.config.get("zero_optimization", {}).get("stage")
    return "file", None


def _restores(info: CheckpointInfo, strategy: Strategy, world_size: int) -> bool:
    """Whether ``strategy`` on ``world_size`` ranks restores ``info`` exactly."""
    kind, stage = _running(strategy)
    if info.kind == "file" and kind == "deepspeed":  # Lightning's weights-only load of a file
        return stage == 3 and bool(getattr(strategy, "load_full_weights", False))
    if info.kind == "file":  # FSDP's file holds FSDP's optimizer layout (IDs over all params)
        return kind == ("fsdp" if info.fsdp_file else "file")
    if info.kind != kind or info.world_size != world_size:
        return False
    return kind != "deepspeed" or info.zero_stage == stage


def _fix(info: CheckpointInfo) -> str:
    """How to resume ``info`` as it is."""
    ranks = f"on {info.world_size} ranks (devices x num_nodes = {info.world_size})"
    if info.kind == "fsdp":
        return f"the FSDP strategy {ranks}"
    if info.kind == "deepspeed":
        return f"DeepSpeed ZeRO-{info.zero_stage} {ranks}"
    return "the FSDP strategy" if info.fsdp_file else "a single device or DDP"


def check_resume(
    ckpt_path: str | Path | None, strategy: Strategy, world_size: int, subcommand: str = "fit"
) -> None:
    """Stop, in one line, when ``strategy`` on ``world_size`` ranks cannot restore ``ckpt_path``.

    Raises:
        ConfigError: naming what wrote the checkpoint, what runs now and the fix.
        ModelLoadError: for an unreadable checkpoint.
    """
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry"):
        return
    info = checkpoint_info(ckpt_path)
    if _restores(info, strategy, world_size):
        return
    kind, stage = _running(strategy)
    running = type(strategy).__name__ + (f" ZeRO-{stage}" if kind == "deepspeed" else "")
    running += f" on {world_size} rank{'s' if world_size != 1 else ''}"
    verb = "resume from" if subcommand == "fit" else "load"
    raise ConfigError(
        f"cannot {verb} '{info.path}': it is {info.writer} and this run is {running}; run with "
        f"{_fix(info)}, or read its weights with `python -m lightning_pref export` or `evaluate`, "
        "which take any checkpoint"
    )
