"""LightningModules: shared plumbing, offline pairs (DPO family) and on-policy step pools."""

from lightning_pref.modules.base import PreferenceModule
from lightning_pref.modules.offline import OfflinePairModule
from lightning_pref.modules.online import StepPoolModule
from lightning_pref.modules.unpaired import UnpairedModule

__all__ = ["OfflinePairModule", "PreferenceModule", "StepPoolModule", "UnpairedModule"]
