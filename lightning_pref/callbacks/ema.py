"""EMA: an exponential moving average of the trainable weights, checkpointed with the run."""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor

from lightning_pref.errors import ConfigError

__all__ = ["EMA", "ema_state_from_checkpoint"]


class EMA(Callback):
    """Keep ``ema = decay·ema + (1 − decay)·w`` of every trainable weight after each optimizer step.

    The average lives in fp32 on the weights' device, is saved in the checkpoint (so a resumed
    run continues it exactly) and, with ``validate_with_ema``, replaces the weights during
    validation. ``python -m lightning_pref evaluate --ema true`` samples with it. A batch that
    takes k optimizer steps (the on-policy modules) updates once with ``decay**k``.

    Args:
        decay: the averaging factor per optimizer step (0.9999 ≈ a window of 10k steps).
        start_step: copy the weights at this step and start averaging from there.
        validate_with_ema: validate with the averaged weights.

    Not supported under FSDP or DeepSpeed (weights are sharded there).
    """

    def __init__(
        self, decay: float = 0.9999, start_step: int = 0, validate_with_ema: bool = False
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA: decay must be in (0, 1), got {decay}")
        self.decay, self.start_step, self.validate_with_ema = decay, start_step, validate_with_ema
        self.ema: dict[str, Tensor] = {}
        self._step = -1  # the optimizer step the average includes
        self._backup: dict[str, Tensor] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse sharded strategies."""
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise ConfigError("EMA does not work with FSDP or DeepSpeed yet; drop it")

    @staticmethod
    def _trainable(pl_module: LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """Average in the weights of the optimizer steps this batch took."""
        step = trainer.global_step
        if step < self.start_step or step == self._step:
            return
        params = self._trainable(pl_module)
        if not self.ema:
            self.ema = {n: p.detach().float().clone() for n, p in params.items()}
        else:
            weight = self.decay ** (step - self._step)
            for name, param in params.items():
                if self.ema[name].device != param.device:  # restored from a checkpoint
                    self.ema[name] = self.ema[name].to(param.device)
                self.ema[name].mul_(weight).add_(param.detach().float(), alpha=1 - weight)
        self._step = step

    @torch.no_grad()
    def _swap(self, pl_module: LightningModule, use_ema: bool) -> None:
        params = self._trainable(pl_module)
        if use_ema:
            self._backup = {n: p.detach().clone() for n, p in params.items()}
            for name, param in params.items():
                param.copy_(self.ema[name])
        else:
            for name, param in params.items():
                param.copy_(self._backup[name])
            self._backup = {}

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validate with the average."""
        if self.validate_with_ema and self.ema and not trainer.sanity_checking:
            self._swap(pl_module, use_ema=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Put the trained weights back."""
        if self._backup:
            self._swap(pl_module, use_ema=False)

    def state_dict(self) -> dict[str, Any]:
        """The average and the step it includes."""
        return {"ema": self.ema, "step": self._step, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved average."""
        self.ema, self._step = dict(state_dict["ema"]), int(state_dict["step"])


def ema_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Tensor] | None:
    """The EMA weights saved by :class:`EMA` in a Lightning checkpoint, or None."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("EMA") and isinstance(state, dict) and "ema" in state:
            return state["ema"] or None
    return None
