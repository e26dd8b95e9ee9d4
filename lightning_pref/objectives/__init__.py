"""Preference objectives, one class per method; pick one in YAML by ``class_path``."""

from lightning_pref.objectives.base import PairObjective, PreferenceObjective, StepObjective
from lightning_pref.objectives.dpo import DiffusionDPO
from lightning_pref.objectives.sft import SFT
from lightning_pref.objectives.spo import SPO
from lightning_pref.objectives.tailorpo import TailorPO

__all__ = [
    "SFT",
    "SPO",
    "DiffusionDPO",
    "PairObjective",
    "PreferenceObjective",
    "StepObjective",
    "TailorPO",
]
