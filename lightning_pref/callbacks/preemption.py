"""Preemption: on SIGUSR1/SIGTERM finish the step, save a checkpoint, requeue under SLURM, exit.

Lightning's own SLURM handler saves its ``hpc_ckpt_N.ckpt`` from inside the signal handler, which
can fire halfway through an optimizer step (after ``optimizer.step()``, before the loop counts
the batch), and it ignores SIGTERM. This callback only records the signal in the handler. The
work happens at the end of the next training batch that finished an optimizer step, the same
point where ``ModelCheckpoint(every_n_train_steps=...)`` saves, so the checkpoint resumes exactly:

1. every rank agrees that a signal arrived (any rank's signal counts; one all-reduce of a flag
   per optimizer step);
2. all ranks save ``last.ckpt`` through :class:`LastCheckpoint` (collective under FSDP and
   DeepSpeed);
3. under a SLURM batch job, rank 0 runs ``scontrol requeue <job>``. The requeued job starts the
   same command again, and ``--ckpt_path last`` picks the checkpoint up;
4. the run stops by raising :class:`Preempted`. The CLI prints one line saying where the
   checkpoint is and exits with 128 + the signal number, as a killed process would.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from lightning_pref.callbacks.checkpoint import LastCheckpoint

__all__ = ["Preempted", "Preemption", "slurm_job_id"]

log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run was stopped by a signal after saving ``ckpt_path`` at ``step``."""

    def __init__(self, signum: int, step: int, ckpt_path: str, requeued: bool) -> None:
        self.signum, self.step, self.ckpt_path, self.requeued = signum, step, ckpt_path, requeued
        name = signal.Signals(signum).name
        then = "the job was requeued" if requeued else "resume with --ckpt_path last"
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint saved to {ckpt_path}; {then}"
        )


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` or the job id of the SLURM batch job we are in; None outside one."""
    if os.environ.get("SLURM_JOB_NAME") in (None, "bash", "interactive"):
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(Callback):
    """Turn SIGUSR1/SIGTERM into a checkpoint at the next step boundary, then stop (and requeue).

    Args:
        signals: the signal names to handle (default ``SIGUSR1`` and ``SIGTERM``; SLURM sends
            SIGUSR1 ahead of the time limit when the job asks for ``--signal=USR1@90``, and
            SIGTERM on preemption or ``scancel``).
        requeue: run ``scontrol requeue`` after saving: ``None`` does so inside a SLURM batch job.
        filename: the checkpoint's file name in the ModelCheckpoint folder (``last.ckpt``, so
            ``--ckpt_path last`` and ``evaluate --run`` both find it).
    """

    def __init__(
        self,
        signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM"),
        requeue: bool | None = None,
        filename: str = "last.ckpt",
    ) -> None:
        self.signals = tuple(signal.Signals[name] for name in signals)
        self.requeue = requeue
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = 0

    # ------------------------------------------------------------------ handlers
    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            log.warning(
                "received %s: saving a checkpoint after this step", signal.Signals(signum).name
            )
        self.received = signum

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Install our handlers (replacing Lightning's mid-step SLURM handler for the run)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Put back whatever handled the signals before the run."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ step boundary
    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        """Remember the step, to act only after batches that stepped the optimizer."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """If any rank got a signal: save, requeue under SLURM, and stop with :class:`Preempted`."""
        if trainer.global_step == self._step_at_batch_start:
            return  # inside gradient accumulation: gradients are not in the checkpoint
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        signum = self.received if self.received is not None else int(signal.SIGTERM)
        ckpt_path = self.save(trainer)
        requeued = False
        job = slurm_job_id()
        if (self.requeue if self.requeue is not None else job is not None) and job is not None:
            requeued = trainer.is_global_zero and self._requeue(job)
        raise Preempted(signum, trainer.global_step, str(ckpt_path), requeued)

    def save(self, trainer: Trainer) -> Path:
        """Save through the run's :class:`LastCheckpoint`, else to ``<dir>/<filename>``.

        ``<dir>`` is the checkpoint callback's folder, else ``default_root_dir``.
        """
        callback = trainer.checkpoint_callback
        if isinstance(callback, LastCheckpoint) and callback.save_last:
            return callback.save_last_now(trainer)
        folder = getattr(callback, "dirpath", None) or trainer.default_root_dir
        path = Path(folder) / self.filename
        trainer.save_checkpoint(path)
        return path

    @staticmethod
    def _requeue(job: str) -> bool:
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        except OSError as err:  # no scontrol here (e.g. inside a container): requeue by hand
            log.error("cannot run scontrol to requeue SLURM job %s: %s", job, err)
            return False
        if result.returncode != 0:
            log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
            return False
        log.warning("requeued SLURM job %s", job)
        return True
