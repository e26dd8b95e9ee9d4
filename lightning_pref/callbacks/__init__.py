"""Training callbacks."""

from lightning_pref.callbacks.checkpoint import LastCheckpoint
from lightning_pref.callbacks.ema import EMA
from lightning_pref.callbacks.preemption import Preempted, Preemption
from lightning_pref.callbacks.progress import StepProgressBar
from lightning_pref.callbacks.run_summary import RunSummary
from lightning_pref.callbacks.sample_grid import SampleGrid

__all__ = [
    "EMA",
    "LastCheckpoint",
    "Preempted",
    "Preemption",
    "RunSummary",
    "SampleGrid",
    "StepProgressBar",
]
