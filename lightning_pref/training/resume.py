"""``fit --ckpt_path last``: find the newest checkpoint of a run and keep logging into its folder.

Lightning's own ``ckpt_path="last"`` looks in the checkpoint folder of the *new* logger version
(``version_N+1``), which is empty, so it warns and starts from scratch. Here ``last`` means: in
the logger's ``<save_dir>/<name>``, the newest ``version_*`` (or the one the config pins) whose
``checkpoints/`` holds a checkpoint; the run resumes from its newest checkpoint (normally
``last.ckpt``) and logs into that same version folder. With nothing to resume it starts fresh and
says so, which is what a requeued or re-launched sweep job wants.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning_pref.errors import ModelLoadError
from lightning_pref.models.files import check_checkpoint_file

__all__ = ["find_last_checkpoint", "resolve_last_checkpoint"]

log = logging.getLogger(__name__)


def _newest_checkpoint(folder: Path) -> Path | None:
    """The most recently written readable ``*.ckpt``, ``last.ckpt`` winning ties.

    A checkpoint is a file, or a folder of shards under FSDP and DeepSpeed. An unreadable file
    (truncated by a crash during the save, or overwritten) is skipped with a message naming it,
    so the run resumes from the newest checkpoint that can be read and loses nothing older.
    """
    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    for ckpt in reversed(ckpts):
        try:
            check_checkpoint_file(ckpt)
        except ModelLoadError as err:
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
