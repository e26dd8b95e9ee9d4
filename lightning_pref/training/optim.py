"""Learning-rate schedules named as in the official scripts, usable from YAML by ``class_path``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["ConstantWithWarmup", "WarmupCosine"]


class _LinearWarmup:
    """``min(1, step / warmup_steps)``: a picklable callable, so LambdaLR can save it."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, step / max(1, self.warmup_steps))


class ConstantWithWarmup(LambdaLR):
    """diffusers' ``constant_with_warmup`` schedule.

    The lr grows linearly from 0 over ``warmup_steps`` optimizer steps, then stays constant
    (Diffusion-DPO launchers: 500 for SD1.5, 200 for SDXL).

    Args:
        optimizer: the wrapped optimizer.
        warmup_steps: optimizer steps of linear warm-up.
        last_epoch: index of the last step, for resuming (-1 = start).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 500, last_epoch: int = -1) -> None:
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, _LinearWarmup(warmup_steps), last_epoch)


class _WarmupCosine:
    """Linear warm-up to 1, then a half cosine down to ``floor`` at ``total_steps``."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, total_steps, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine(LambdaLR):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``floor`` times the base lr.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: optimizer steps at which the cosine reaches its floor.
        warmup_steps: optimizer steps of linear warm-up from 0.
        floor: final lr as a fraction of the base lr.
        last_epoch: index of the last step, for resuming (-1 = start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        floor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_steps, self.warmup_steps, self.floor = total_steps, warmup_steps, floor
        super().__init__(optimizer, _WarmupCosine(warmup_steps, total_steps, floor), last_epoch)
