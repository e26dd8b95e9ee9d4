"""A latent and text-embedding cache: encode a pair dataset once, then train from it.

The official Diffusion-DPO code runs the VAE and the text encoder on every step (METHODS §6). Both
are frozen, so their work can be done once. The cache keeps what training needs to draw exactly
what encoding on the fly draws:

- the VAE posterior of every image as its **mean and standard deviation** (unscaled), so the
  module still samples a fresh latent ``(mean + std · ε) · scaling_factor`` each step, with the same
  generator and the same draw as ``vae.encode(x).latent_dist.sample(generator)``
  (:func:`sample_posterior`); a pixel-space model keeps its pixels and no std;
- the text-encoder output of every distinct caption once, plus the empty caption at index 0,
  which empty-prompt dropout picks at read time.

Layout of a cache folder: ``manifest.json`` (format, model, counts, shapes), ``captions.json``,
``embeds.safetensors`` (``embeds [U, L, D]``) and ``pairs-NNNNN.safetensors`` shards with
``mean [N, 2, C, h, w]`` (winner, loser), ``std`` (latent models), ``pref_prob [N]`` and
``caption [N]`` (indices into ``captions.json``). Shards are read lazily (memory-mapped).

What the cache fixes once: random crops and horizontal flips are off when it is built (one
encoding per image; the official code flips per step). Build it with
``python -m lightning_pref cache-latents`` and train with :class:`CachedPairDataModule`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_pref.data.base import PairDataModule
from lightning_pref.data.pairs import PairCollate, sample_rng
from lightning_pref.errors import DataError
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.types import ImagePairBatch, LatentPairBatch

__all__ = [
    "CACHE_FORMAT",
    "CachedPairDataModule",
    "CachedPairs",
    "build_latent_cache",
    "collate_cached",
    "read_manifest",
    "sample_posterior",
]

CACHE_FORMAT = "lightning_pref-latent-cache/1"
MANIFEST = "manifest.json"


class _Writer:
    """Buffers encoded rows and writes them as shards of ``shard_size`` pairs."""

    def __init__(self, out: Path, shard_size: int) -> None:
        self.out, self.shard_size = out, shard_size
        self.parts: dict[str, list[Tensor]] = {}
        self.rows, self.shards = 0, []

    def add(self, **tensors: Tensor) -> None:
        for key, value in tensors.items():
            self.parts.setdefault(key, []).append(value.cpu())
        self.rows += len(tensors["pref_prob"])
        if self.rows >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"pairs-{len(self.shards):05d}.safetensors"
        save_file({k: torch.cat(v).contiguous() for k, v in self.parts.items()}, self.out / name)
        self.shards.append({"file": name, "rows": self.rows})
        self.parts, self.rows = {}, 0


@torch.no_grad()
def build_latent_cache(
    policy: DiffusionPolicy,
    dataset: Dataset,
    out: str | Path,
    resolution: int,
    batch_size: int = 16,
    shard_size: int = 4096,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode every pair of ``dataset`` (map-style, yields ``PairSample``) into a cache folder.

    Args:
        policy: a built policy; its VAE and text encoder do the encoding, on its device.
        dataset: the pairs, read in order (build it without flips, crops or caption dropout).
        out: the cache folder (created; an existing cache there is replaced).
        resolution: image side of the dataset (for the collate of all-corrupt batches).
        batch_size: pairs encoded per forward.
        shard_size: pairs per shard file.
        dtype: storage dtype of means, stds and embeddings (float32 keeps training bit-exact).
        num_workers: DataLoader workers decoding images.
        progress: show a progress bar.
        metadata: more entries for the manifest (``cache-latents`` records the source data
            module's ``proportion_empty_prompts`` there, the default of the cached data module).

    Returns:
        The manifest that was written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pairs-*.safetensors"):
        old.unlink()
    loader = DataLoader(
        dataset,
        batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=PairCollate(resolution),
    )
    writer = _Writer(out, shard_size)
    captions, embeds, skipped = _encode_pairs(policy, loader, writer, dtype, progress)
    save_file({"embeds": embeds}, out / "embeds.safetensors")
    (out / "captions.json").write_text(json.dumps(list(captions), ensure_ascii=False))
    manifest = {
        "format": CACHE_FORMAT,
        "model": policy.pretrained,
        "latent": policy.vae is not None,
        **_vae_factors(policy),
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": resolution,
        "num_pairs": sum(s["rows"] for s in writer.shards),
        "num_captions": len(captions),
        "rows_skipped": skipped,
        "shards": writer.shards,
        **(metadata or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _encode_pairs(
    policy: DiffusionPolicy,
    loader: DataLoader,
    writer: _Writer,
    dtype: torch.dtype,
    progress: bool,
) -> tuple[dict[str, int], Tensor, int]:
    """Encodes every batch of ``loader`` into ``writer`` (flushed at the end).

    Returns:
        Each distinct caption's index (``""`` first), their embeddings ``[U, L, D]`` and the
        number of rows the collate skipped.
    """
    from tqdm.auto import tqdm

    captions: dict[str, int] = {"": 0}
    embeds = [policy.encode_prompt([""]).to(dtype).cpu()]  # [1, L, D]
    skipped = 0
    for batch in tqdm(loader, desc="cache-latents", unit="batch", disable=not progress):
        skipped += batch.num_skipped
        if not batch.captions:
            continue
        new = [c for c in dict.fromkeys(batch.captions) if c not in captions]
        if new:
            embeds.append(policy.encode_prompt(new).to(dtype).cpu())
            captions.update({c: len(captions) + i for i, c in enumerate(new)})
        index = torch.tensor([captions[c] for c in batch.captions], dtype=torch.long)  # [B]
        writer.add(**_encode_batch(policy, batch, dtype), caption=index)
    writer.flush()
    return captions, torch.cat(embeds).contiguous(), skipped


def _encode_batch(
    policy: DiffusionPolicy, batch: ImagePairBatch, dtype: torch.dtype
) -> dict[str, Tensor]:
    """The cache rows of one batch: posterior ``mean`` (and ``std``) and ``pref_prob``."""
    device = policy.unet.device
    pixels = torch.cat([batch.pixels_w, batch.pixels_l]).to(device)  # [2B, 3, H, W]
    mean, std = _posterior(policy, pixels)  # [2B, C, h, w] each; std None for pixels
    rows = {"mean": torch.stack(mean.chunk(2), 1).to(dtype)}  # [B, 2, C, h, w]
    if std is not None:
        rows["std"] = torch.stack(std.chunk(2), 1).to(dtype)
    rows["pref_prob"] = batch.pref_prob.float()
    return rows


def _posterior(policy: DiffusionPolicy, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
    """The VAE posterior's (mean, std) of images in [-1, 1], or (pixels, None) without a VAE."""
    if policy.vae is None:
        return pixels, None
    dist = policy.vae.encode(pixels.to(policy.vae.dtype)).latent_dist
    # contiguous: the VAE hands back channels-last strides (see DiffusionPolicy.encode_images)
    return dist.mean.contiguous(), dist.std.contiguous()


def _vae_factors(policy: DiffusionPolicy) -> dict[str, float]:
    """The VAE's ``scaling_factor`` and ``shift_factor`` (0 for SD); 1 and 0 without a VAE."""
    if policy.vae is None:
        return {"scaling_factor": 1.0, "shift_factor": 0.0}
    config = policy.vae.config
    return {
        "scaling_factor": float(config.scaling_factor),
        "shift_factor": float(config.get("shift_factor") or 0.0),
    }


def sample_posterior(
    mean: Tensor,
    std: Tensor | None,
    scaling_factor: float,
    generator: torch.Generator,
    shift_factor: float = 0.0,
) -> Tensor:
    """A latent drawn from a cached posterior: ``(mean + std · ε − shift_factor) · scaling_factor``.

    The same draw as ``(vae.encode(x).latent_dist.sample(generator) − shift) * scaling_factor``
    for the same generator state (diffusers draws ``ε = randn(mean.shape)`` with the generator,
    then adds); ``shift_factor`` is the SD3/FLUX VAEs' (0 for SD's).
    Without ``std`` (pixel-space model) ``mean`` is returned and nothing is drawn, as
    :meth:`~lightning_pref.models.DiffusionPolicy.encode_images` draws nothing there.
    """
    if std is None:
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * eps - shift_factor) * scaling_factor


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a cache folder, checked.

    Raises:
        DataError: if ``path`` is not a cache built by ``cache-latents``.
    """
    file = Path(path).expanduser() / MANIFEST
    if not file.is_file():
        raise DataError(
            f"'{path}' is not a latent cache (no {MANIFEST}); build one with "
            "`python -m lightning_pref cache-latents --config CONFIG --out DIR`"
        )
    manifest = json.loads(file.read_text())
    if manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"'{path}' has cache format {manifest.get('format')!r}, not {CACHE_FORMAT}")
    return manifest


class CachedPairs(Dataset):
    """Map-style pairs read from a cache folder; keys are ``index`` or ``(epoch, index)``.

    Args:
        path: the cache folder.
        proportion_empty_prompts: probability that a pair's caption becomes "" (one draw a pair,
            from ``(seed, epoch, index)``, so it does not depend on workers or resume).
        seed: seed of the dropout draws.
        max_pairs: use only the first this many pairs.
    """

    def __init__(
        self,
        path: str | Path,
        proportion_empty_prompts: float = 0.0,
        seed: int = 0,
        max_pairs: int | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path)
        self.proportion_empty_prompts, self.seed = proportion_empty_prompts, seed
        self.starts: list[int] = []
        total = 0
        for shard in self.manifest["shards"]:
            self.starts.append(total)
            total += int(shard["rows"])
        self.num_pairs = total if max_pairs is None else min(total, max_pairs)
        self._files: dict[str, Any] = {}  # opened lazily, per process (DataLoader workers)

    def __len__(self) -> int:
        return self.num_pairs

    def _open(self, name: str) -> Any:
        if name not in self._files:
            self._files[name] = safe_open(str(self.path / name), framework="pt")
        return self._files[name]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        shard = max(i for i, start in enumerate(self.starts) if start <= index)
        row = index - self.starts[shard]
        f = self._open(self.manifest["shards"][shard]["file"])
        item = {k: f.get_slice(k)[row : row + 1][0] for k in f.keys()}  # noqa: SIM118
        caption = int(item.pop("caption"))
        if sample_rng(self.seed, epoch, index).random() < self.proportion_empty_prompts:
            caption = 0
        item["embeds"] = self._open("embeds.safetensors").get_slice("embeds")[
            caption : caption + 1
        ][0]
        return item


def collate_cached(items: list[dict[str, Any]]) -> LatentPairBatch:
    """Stack cache rows into a :class:`LatentPairBatch` (stored dtype kept; the module casts)."""
    mean = torch.stack([i["mean"] for i in items])  # [B, 2, C, h, w]
    std = torch.stack([i["std"] for i in items]) if "std" in items[0] else None
    return LatentPairBatch(
        mean[:, 0],
        mean[:, 1],
        None if std is None else std[:, 0],
        None if std is None else std[:, 1],
        torch.stack([i["embeds"] for i in items]),  # [B, L, D]
        torch.stack([i["pref_prob"] for i in items]).float(),  # [B]
    )


class CachedPairDataModule(PairDataModule):
    """Training (and validation) pairs from latent caches built by ``cache-latents``.

    The training loader shuffles with the same resumable, rank-sharding sampler as the parquet
    path, so an interrupted run resumes exactly; validation keeps file order.

    Args:
        train_cache: the training cache folder.
        val_cache: a validation cache folder; None: no validation.
        batch_size: training pairs per batch and per device.
        val_batch_size: validation pairs per batch; None = ``batch_size``.
        proportion_empty_prompts: fraction of training captions set to "" (official: 0.2); None:
            the value of the data module the cache was built from (recorded by ``cache-latents``;
            0.2 if the manifest has none).
        num_workers: DataLoader worker processes.
        seed: seed of the shuffle and the dropout draws; None: the run's ``--seed_everything``.
        max_val_pairs: use only the first this many validation pairs.
    """

    train_set: CachedPairs | None = None  # opened by setup("fit")
    val_set: CachedPairs | None = None  # opened by setup("fit"/"validate"); None: no validation

    def __init__(
        self,
        train_cache: str,
        val_cache: str | None = None,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        proportion_empty_prompts: float | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        max_val_pairs: int | None = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_val_pairs)
        self.save_hyperparameters()
        self.train_cache, self.val_cache = train_cache, val_cache
        self.proportion_empty_prompts = proportion_empty_prompts

    def setup(self, stage: str | None = None) -> None:
        """Open the caches (reads only their manifests)."""
        if stage in (None, "fit") and self.train_set is None:
            dropout = self.proportion_empty_prompts
            if dropout is None:
                recorded = read_manifest(self.train_cache).get("proportion_empty_prompts", 0.2)
                dropout = float(recorded)
            self.train_set = CachedPairs(self.train_cache, dropout, self.seed)
        if stage in (None, "fit", "validate") and self.val_set is None and self.val_cache:
            self.val_set = CachedPairs(self.val_cache, 0.0, self.seed, self.max_val_pairs)

    def collate_fn(self) -> Callable[[list[dict[str, Any]]], LatentPairBatch]:
        """Stacks cache rows into a :class:`LatentPairBatch`."""
        return collate_cached

    def empty_train_message(self) -> str:
        """The error for a training cache without pairs."""
        return f"the latent cache '{self.train_cache}' holds no pairs"
