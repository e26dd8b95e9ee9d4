"""LightningModules: shared plumbing, offline pairs (DPO family) and on-policy step pools."""

from lightning_pref.modules.base import PreferenceModule
from lightning_pref.modules.offline import OfflinePairModule
from lightning_pref.modules.online import StepPoolModule

__all__ = ["OfflinePairModule", "PreferenceModule", "StepPoolModule"]
