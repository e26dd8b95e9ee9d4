"""MiniPick: the embedded benchmark (procedural scenes and captions, and a hidden gold rater).

The world and the rater are pure torch; the policy, data and asset modules add the base model
(pretrained by our own ``fit``) and the Pick-a-Pic-format pairs, cached on first use.
"""

from lightning_pref.minipick.aesthetic import MiniPickAesthetic
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.cached import MiniPickSPM, SPMDataModule, SPMModule
from lightning_pref.minipick.capo_data import MiniPickCaPODataModule
from lightning_pref.minipick.capo_pairs import CaPOSettings, build_capo_folder
from lightning_pref.minipick.data import (
    MiniPickDataModule,
    MiniPickNoisePairDataModule,
    MiniPickPromptDataModule,
)
from lightning_pref.minipick.flow import MiniPickFlowPolicy
from lightning_pref.minipick.policy import MiniPickPolicy
from lightning_pref.minipick.proxy import (
    MiniPickScore,
    ProxyConfig,
    caption_contrastive_loss,
    pickscore_loss,
)
from lightning_pref.minipick.proxy_train import (
    PreferencePairs,
    evaluate_pairs,
    fit_proxy,
    load_pairs,
    train_proxy,
)
from lightning_pref.minipick.rater import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TIE_MARGIN,
    GoldRater,
    RaterWeights,
    calibration_diffs,
    label_pairs,
    temperature_for_agreement,
    tie_margin_for_rate,
)
from lightning_pref.minipick.scenes import SceneDataModule
from lightning_pref.minipick.spm import SPMConfig, StepAwareMiniPickScore
from lightning_pref.minipick.spm_data import predict_x0
from lightning_pref.minipick.spm_train import SPMObjective, train_spm
from lightning_pref.minipick.store import AssetSettings, default_data_dir
from lightning_pref.minipick.world import (
    AREA_FACTORS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    CaptionSpec,
    Imperfection,
    Scene,
    all_specs,
    caption,
    imperfect_render,
    parse_caption,
    prompts,
    render,
    sample_scenes,
    scenes_for,
    shape_coverage,
    split_specs,
)

__all__ = [
    "MiniPickFlowPolicy",
    "MiniPickNoisePairDataModule",
    "AssetSettings",
    "CaPOSettings",
    "MiniPickAesthetic",
    "MiniPickAssets",
    "MiniPickCaPODataModule",
    "MiniPickDataModule",
    "MiniPickPromptDataModule",
    "MiniPickPolicy",
    "MiniPickScore",
    "MiniPickSPM",
    "PreferencePairs",
    "ProxyConfig",
    "SceneDataModule",
    "SPMConfig",
    "SPMDataModule",
    "SPMModule",
    "SPMObjective",
    "StepAwareMiniPickScore",
    "build_capo_folder",
    "default_data_dir",
    "evaluate_pairs",
    "fit_proxy",
    "load_pairs",
    "pickscore_loss",
    "predict_x0",
    "train_proxy",
    "train_spm",
    "AREA_FACTORS",
    "COLORS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TIE_MARGIN",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "CaptionSpec",
    "GoldRater",
    "Imperfection",
    "RaterWeights",
    "Scene",
    "all_specs",
    "calibration_diffs",
    "caption_contrastive_loss",
    "caption",
    "imperfect_render",
    "label_pairs",
    "parse_caption",
    "prompts",
    "render",
    "sample_scenes",
    "scenes_for",
    "shape_coverage",
    "split_specs",
    "temperature_for_agreement",
    "tie_margin_for_rate",
]
