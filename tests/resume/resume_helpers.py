"""Loaded by ``class_path`` in the resume tests' CLI subprocesses (``PYTHONPATH=tests/resume``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.callbacks import Callback

from lightning_pref.callbacks.preemption import Preemption
from lightning_pref.scoring.base import Scorer


class Brightness(Scorer):
    """A toy differentiable reward built in code: 10 × mean pixel value."""

    def forward(self, images, captions, timesteps=None):
        return images.mean(dim=(1, 2, 3)) * 10


class PauseForSignal(Callback):
    """Halfway through optimizer step ``step + 1`` (gradients computed, weights not yet updated),
    write ``ready_file`` and wait up to 120 s for the test to send a signal.

    Under SIGKILL the process dies here; under SIGTERM/SIGUSR1 the Preemption handler records the
    signal, this callback returns, and the step completes before the checkpoint is written.
    """

    def __init__(self, step: int, ready_file: str) -> None:
        self.step, self.ready_file = step, Path(ready_file)

    def on_before_optimizer_step(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step != self.step or self.ready_file.exists():
            return
        preemption = next(c for c in trainer.callbacks if isinstance(c, Preemption))
        self.ready_file.write_text(str(trainer.global_step))
        deadline = time.monotonic() + 120
        while preemption.received is None and time.monotonic() < deadline:
            time.sleep(0.02)
