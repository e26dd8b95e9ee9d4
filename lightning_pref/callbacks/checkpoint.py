"""LastCheckpoint: ModelCheckpoint whose ``last.ckpt`` always holds the run's final state."""

from __future__ import annotations

from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(save_last=True)`` that also saves ``last.ckpt`` when training ends.

    Lightning's ``save_last`` writes ``last.ckpt`` only when another checkpoint is saved (after a
    validation or an epoch), so a run whose ``max_steps`` falls between those ends with a stale
    ``last.ckpt``: ``evaluate --run`` would score an older model, and a resumed run would redo
    steps. :meth:`save_last_now` is also what :class:`~lightning_pref.callbacks.Preemption` calls,
    so the preemption checkpoint is this callback's own ``last.ckpt`` (no ``last-v1.ckpt`` after
    the resume). Other arguments are ``ModelCheckpoint``'s.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(**kwargs)

    def save_last_now(self, trainer: Trainer) -> Path:
        """Write ``last.ckpt`` for the current step (collective under sharded strategies)."""
        # ModelCheckpoint's own save-last path: it versions, tracks and cleans up the file
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return Path(self.last_model_path)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save ``last.ckpt`` if the final step has not been saved yet."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self.save_last_now(trainer)
            return
        super().on_train_end(trainer, pl_module)
