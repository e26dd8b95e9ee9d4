"""``python -m lightning_pref cache-latents``: encode a training config's pairs once.

Reads the model and data of a training config, turns off random crops, flips and caption dropout
(the cache holds one encoding per image; dropout is applied again when the cache is read, at the
config's rate, which the manifest records), and
writes a cache folder (:mod:`lightning_pref.data.latent_cache`). Train from it by swapping the data
module for :class:`~lightning_pref.data.CachedPairDataModule`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lightning_pref.cli import parse_dataclass
from lightning_pref.data.latent_cache import build_latent_cache
from lightning_pref.data.pairs import PickAPicStream
from lightning_pref.errors import ConfigError, DataError
from lightning_pref.models.policy import TORCH_DTYPES

__all__ = ["CacheLatentsArgs", "main"]

_NO_AUGMENT = {"hflip": False, "random_crop": False, "proportion_empty_prompts": 0.0}


@dataclass
class CacheLatentsArgs:
    """Encode the pairs of a training config once (VAE posterior + text embeddings).

    Attributes:
        config: training config (model and data).
        out: cache folder to write.
        split: which split of the config's data to encode.
        batch_size: pairs per encoder forward.
        shard_size: pairs per shard file.
        dtype: storage dtype (float32: exact).
        device: auto (CUDA if available), cpu, cuda.
    """

    config: str
    out: str
    split: Literal["train", "val"] = "train"
    batch_size: int = 16
    shard_size: int = 4096
    dtype: Literal["bfloat16", "float16", "float32"] = "float32"
    device: str = "auto"


def main(argv: list[str]) -> dict[str, Any]:
    """Parse the arguments, build the cache and print where it is and how to train from it."""
    from lightning_pref.runs import build_from_config

    args = parse_dataclass(CacheLatentsArgs, argv, "python -m lightning_pref cache-latents")
    built = build_from_config(args.config)
    module, data = built.model, built.datamodule
    if not hasattr(data, "train_set") or not hasattr(data, "resolution"):
        raise ConfigError(
            f"the data module of '{args.config}' ({type(data).__name__}) does not read image "
            "pairs; cache-latents needs PickAPicDataModule, PairFolderDataModule or "
            "MiniPickDataModule"
        )
    dropout = float(getattr(data, "proportion_empty_prompts", 0.0))
    for key, value in _NO_AUGMENT.items():
        if hasattr(data, key):
            setattr(data, key, value)
    data.prepare_data()
    data.setup("fit")
    dataset = data.train_set if args.split == "train" else data.val_set
    if dataset is None:
        raise DataError(f"the config '{args.config}' has no {args.split} data")
    if isinstance(dataset, PickAPicStream):
        raise DataError("cache-latents reads the data in order: set data.init_args.streaming false")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    policy = module.policy
    policy.build()
    policy.to(device).eval()
    start = time.perf_counter()
    manifest = build_latent_cache(
        policy,
        dataset,
        args.out,
        resolution=data.resolution,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        dtype=TORCH_DTYPES[args.dtype],
        metadata={"proportion_empty_prompts": dropout, "config": str(args.config)},
    )
    seconds = time.perf_counter() - start
    print(
        f"cached {manifest['num_pairs']} pairs ({manifest['num_captions']} captions, "
        f"{manifest['rows_skipped']} corrupt rows skipped) into {args.out} in {seconds:.1f} s "
        f"({manifest['num_pairs'] / max(seconds, 1e-9):.1f} pairs/s). Train from it with "
        "--data lightning_pref.data.CachedPairDataModule --data.init_args.train_cache "
        f"{args.out}"
    )
    return manifest
