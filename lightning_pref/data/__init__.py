"""Data: preference pairs (Pick-a-Pic parquet, image folder + CSV), exact resume, transforms."""

from lightning_pref.data.fake import PICKAPIC_SCHEMA, write_fake_pickapic
from lightning_pref.data.folder import PairFolderDataModule, read_pair_csv
from lightning_pref.data.latent_cache import CachedPairDataModule, CachedPairs, build_latent_cache
from lightning_pref.data.pairs import (
    PairBuilder,
    PairCollate,
    PairSample,
    PickAPicPairs,
    PickAPicStream,
)
from lightning_pref.data.pickapic import REQUIRED_COLUMNS, PickAPicDataModule, resolve_data_files
from lightning_pref.data.prompts import PromptDataModule, PromptList, load_prompts
from lightning_pref.data.sampler import ResumableDataLoader, ResumableSampler, ResumableStream
from lightning_pref.data.scored import (
    SCORE_COLUMNS,
    SCORES_FILE,
    SMPO_SCORE_MAX,
    SMPO_SCORE_MIN,
    ScoreLabels,
    score_pairs,
)
from lightning_pref.data.step_pool import StepPool, StepPoolSampler
from lightning_pref.data.transforms import ImageTransform, decode_image

__all__ = [
    "PICKAPIC_SCHEMA",
    "REQUIRED_COLUMNS",
    "SCORES_FILE",
    "SCORE_COLUMNS",
    "SMPO_SCORE_MAX",
    "SMPO_SCORE_MIN",
    "CachedPairDataModule",
    "CachedPairs",
    "ImageTransform",
    "PairBuilder",
    "PairCollate",
    "PairFolderDataModule",
    "PairSample",
    "PickAPicDataModule",
    "PickAPicPairs",
    "PickAPicStream",
    "PromptDataModule",
    "PromptList",
    "ResumableDataLoader",
    "ResumableSampler",
    "ResumableStream",
    "ScoreLabels",
    "StepPool",
    "StepPoolSampler",
    "build_latent_cache",
    "decode_image",
    "load_prompts",
    "read_pair_csv",
    "resolve_data_files",
    "score_pairs",
    "write_fake_pickapic",
]
