"""Training callbacks."""

from lightning_pref.callbacks.checkpoint import LastCheckpoint
from lightning_pref.callbacks.preemption import Preempted, Preemption
from lightning_pref.callbacks.progress import StepProgressBar
from lightning_pref.callbacks.run_summary import RunSummary

__all__ = ["LastCheckpoint", "Preempted", "Preemption", "RunSummary", "StepProgressBar"]
