"""LightningModules: shared plumbing, offline pairs (DPO family), on-policy step pools, Self-NPO."""

from lightning_pref.modules.base import PreferenceModule
from lightning_pref.modules.offline import OfflinePairModule
from lightning_pref.modules.online import StepPoolModule
from lightning_pref.modules.self_npo import SelfNPOModule
from lightning_pref.modules.unpaired import UnpairedModule

__all__ = [
    "OfflinePairModule",
    "PreferenceModule",
    "SelfNPOModule",
    "StepPoolModule",
    "UnpairedModule",
]
