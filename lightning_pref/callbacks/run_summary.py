"""RunSummary: write ``metrics.json`` (status, step, last metric values) into the run's folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from lightning_pref.callbacks.preemption import Preempted

__all__ = ["RunSummary", "read_run_summary"]

FILENAME = "metrics.json"


class RunSummary(Callback):
    """Keep ``<log_dir>/metrics.json`` up to date, so sweeps can tabulate runs without TensorBoard.

    The file is ``{"status", "global_step", "max_steps", "metrics"}``; ``status`` is ``running``
    (written after every validation), ``finished``, ``preempted`` (stopped by a signal after saving
    a checkpoint) or ``failed``. ``metrics`` holds the latest value of every logged scalar
    (``trainer.callback_metrics``). Only rank 0 writes; the file is replaced atomically.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the metrics so far."""
        if not trainer.sanity_checking:
            self.write(trainer, "running")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The run reached its step or epoch budget."""
        self.write(trainer, "finished")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """A preemption (checkpoint saved) or a failure."""
        self.write(trainer, "preempted" if isinstance(exception, Preempted) else "failed")

    @staticmethod
    def write(trainer: Trainer, status: str) -> None:
        """Write the summary for ``status`` (rank 0 only)."""
        if not trainer.is_global_zero:
            return
        # not trainer.log_dir: that broadcasts, and the other ranks may be gone after a failure
        log_dir = trainer.logger.log_dir if trainer.logger is not None else None
        log_dir = log_dir or trainer.default_root_dir
        metrics: dict[str, float] = {}
        for key, value in trainer.callback_metrics.items():
            number = float(value.detach().float().mean()) if hasattr(value, "detach") else value
            if isinstance(number, float) and math.isfinite(number):
                metrics[key] = number
        summary: dict[str, Any] = {
            "status": status,
            "global_step": trainer.global_step,
            "max_steps": trainer.max_steps,
            "metrics": dict(sorted(metrics.items())),
        }
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{FILENAME}.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, folder / FILENAME)


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run's version folder, or None if there is none."""
    path = Path(run_dir) / FILENAME
    return json.loads(path.read_text()) if path.is_file() else None
