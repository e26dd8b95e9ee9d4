"""Training support: LR schedules, seeding, ``--ckpt_path last``, CPU-capable strategies."""

from lightning_pref.training.optim import ConstantWithWarmup, WarmupCosine
from lightning_pref.training.resume import find_last_checkpoint, resolve_last_checkpoint
from lightning_pref.training.seeding import resolve_seed
from lightning_pref.training.strategies import FSDP, DeepSpeed

__all__ = [
    "FSDP",
    "ConstantWithWarmup",
    "DeepSpeed",
    "WarmupCosine",
    "find_last_checkpoint",
    "resolve_last_checkpoint",
    "resolve_seed",
]
