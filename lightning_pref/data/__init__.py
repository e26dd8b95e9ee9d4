"""Data: preference pairs (Pick-a-Pic parquet, image folder + CSV), exact resume, transforms."""

from lightning_pref.data.base import PairDataModule
from lightning_pref.data.fake import (
    PICKAPIC_NO_IMAGES_SCHEMA,
    PICKAPIC_SCHEMA,
    write_fake_pickapic,
)
from lightning_pref.data.folder import PairFolderDataModule, read_pair_csv
from lightning_pref.data.latent_cache import CachedPairDataModule, CachedPairs, build_latent_cache
from lightning_pref.data.no_images import NO_IMAGES_COLUMNS, read_no_images, resolve_image_path
from lightning_pref.data.noise_pairs import (
    NoisePairDataModule,
    NoisePairs,
    generate_noise_pairs,
)
from lightning_pref.data.pairs import (
    PairBuilder,
    PairCollate,
    PairSample,
    PickAPicPairs,
    PickAPicStream,
    SkipLogger,
)
from lightning_pref.data.parquet import (
    REQUIRED_COLUMNS,
    SCORE_COLUMNS,
    check_parquet_columns,
    check_score_columns,
    load_hub,
    local_split_files,
    resolve_data_files,
)
from lightning_pref.data.pickapic import PickAPicDataModule
from lightning_pref.data.prompts import PromptDataModule, PromptList, load_prompts
from lightning_pref.data.sampler import ResumableDataLoader, ResumableSampler, ResumableStream
from lightning_pref.data.scored import (
    SCORES_FILE,
    SMPO_SCORE_MAX,
    SMPO_SCORE_MIN,
    ScoreLabels,
    score_pairs,
)
from lightning_pref.data.step_pool import StepPool, StepPoolSampler
from lightning_pref.data.transforms import ImageTransform, decode_image

__all__ = [
    "NoisePairDataModule",
    "NoisePairs",
    "generate_noise_pairs",
    "NO_IMAGES_COLUMNS",
    "PICKAPIC_NO_IMAGES_SCHEMA",
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
    "PairDataModule",
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
    "SkipLogger",
    "StepPool",
    "StepPoolSampler",
    "build_latent_cache",
    "check_parquet_columns",
    "check_score_columns",
    "decode_image",
    "load_hub",
    "load_prompts",
    "local_split_files",
    "read_no_images",
    "read_pair_csv",
    "resolve_data_files",
    "resolve_image_path",
    "score_pairs",
    "write_fake_pickapic",
]
