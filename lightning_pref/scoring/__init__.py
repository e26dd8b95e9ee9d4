"""Scorers: rewards and preference models behind one interface."""

from lightning_pref.scoring.aesthetic import LAIONAesthetic, RewardMLP
from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.clip import ClipPreprocess
from lightning_pref.scoring.clip_score import CLIPScore
from lightning_pref.scoring.convert import (
    convert_image_reward_state_dict,
    convert_open_clip_state_dict,
    open_clip_config,
)
from lightning_pref.scoring.hps import HPSv2
from lightning_pref.scoring.image_reward import ImageReward
from lightning_pref.scoring.pickscore import PickScore
from lightning_pref.scoring.pretrained import PretrainedPickScore, PretrainedStepAwarePickScore
from lightning_pref.scoring.step_aware import (
    StepAwarePickScore,
    TimestepModulation,
    split_spo_state_dict,
)

__all__ = [
    "CLIPScore",
    "ClipPreprocess",
    "HPSv2",
    "ImageReward",
    "LAIONAesthetic",
    "PickScore",
    "PretrainedPickScore",
    "PretrainedStepAwarePickScore",
    "RewardMLP",
    "Scorer",
    "StepAwarePickScore",
    "TimestepModulation",
    "convert_image_reward_state_dict",
    "convert_open_clip_state_dict",
    "open_clip_config",
    "split_spo_state_dict",
]
