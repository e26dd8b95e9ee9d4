"""Preference objectives, one class per method; pick one in YAML by ``class_path``."""

from lightning_pref.objectives.base import (
    PairObjective,
    PreferenceObjective,
    StepObjective,
    UnpairedObjective,
)
from lightning_pref.objectives.dpo import DiffusionDPO
from lightning_pref.objectives.dspo import DSPO
from lightning_pref.objectives.inpo import InPO
from lightning_pref.objectives.kto import DiffusionKTO
from lightning_pref.objectives.mapo import MaPO
from lightning_pref.objectives.sft import SFT
from lightning_pref.objectives.smpo import SmPO
from lightning_pref.objectives.spo import SPO
from lightning_pref.objectives.tailorpo import TailorPO

__all__ = [
    "DSPO",
    "SFT",
    "SPO",
    "DiffusionDPO",
    "DiffusionKTO",
    "InPO",
    "MaPO",
    "PairObjective",
    "PreferenceObjective",
    "SmPO",
    "StepObjective",
    "TailorPO",
    "UnpairedObjective",
]
