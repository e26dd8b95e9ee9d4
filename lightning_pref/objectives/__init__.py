"""Preference objectives, one class per method; pick one in YAML by ``class_path``."""

from lightning_pref.objectives.base import (
    PairObjective,
    PreferenceObjective,
    StepObjective,
    TargetObjective,
    UnpairedObjective,
)
from lightning_pref.objectives.capo import CaPO
from lightning_pref.objectives.dpo import DiffusionDPO
from lightning_pref.objectives.dspo import DSPO, DSPOSDXL
from lightning_pref.objectives.inpo import InPO
from lightning_pref.objectives.kto import DiffusionKTO
from lightning_pref.objectives.mapo import MaPO
from lightning_pref.objectives.npo import DiffusionNPO
from lightning_pref.objectives.pnapo import PNAPO
from lightning_pref.objectives.reverse_kl import DiffusionEXO
from lightning_pref.objectives.self_npo import SelfNPOLoss
from lightning_pref.objectives.sft import SFT
from lightning_pref.objectives.smpo import SmPO
from lightning_pref.objectives.spo import SPO
from lightning_pref.objectives.tailorpo import TailorPO

__all__ = [
    "PNAPO",
    "DSPO",
    "DSPOSDXL",
    "SFT",
    "SPO",
    "CaPO",
    "DiffusionDPO",
    "DiffusionEXO",
    "DiffusionKTO",
    "DiffusionNPO",
    "InPO",
    "MaPO",
    "PairObjective",
    "PreferenceObjective",
    "SelfNPOLoss",
    "SmPO",
    "StepObjective",
    "TailorPO",
    "TargetObjective",
    "UnpairedObjective",
]
