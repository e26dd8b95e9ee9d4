"""Scorers: rewards and preference models behind one interface."""

from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.pickscore import ClipPreprocess, PickScore
from lightning_pref.scoring.pretrained import PretrainedPickScore, PretrainedStepAwarePickScore
from lightning_pref.scoring.step_aware import (
    StepAwarePickScore,
    TimestepModulation,
    split_spo_state_dict,
)

__all__ = [
    "ClipPreprocess",
    "PickScore",
    "PretrainedPickScore",
    "PretrainedStepAwarePickScore",
    "Scorer",
    "StepAwarePickScore",
    "TimestepModulation",
    "split_spo_state_dict",
]
