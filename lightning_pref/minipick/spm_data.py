"""Data for the step-aware MiniPick preference model: seeded (pair, t, ε) draws and their x̂0.

SPO's SPM data (METHODS §2.2, official ``spm_task.py``): per labelled pair draw t, add the **same**
Gaussian noise to both images (DDPM forward noising with the base model's schedule) and let the
frozen base UNet with CFG 5 predict x̂0 from x_t (one DDIM x0 prediction; the MiniPick scheduler's
``clip_sample`` clamps it to [-1, 1]). Ties are kept (0.5/0.5) and ``num_example_per_prompt`` is
carried as a weight.

For speed on CPUs the draws are fixed: each training pair gets ``draws_per_pair`` seeded (t, ε)
draws with t stratified over ``[0, 1000)`` (draw k in ``[k, k + 1) * 1000 / K``, so a draw chosen
at random is still ``U[0, 1000)``), and every validation pair is scored at each of SPO's evaluation
timesteps. :func:`predict_x0` turns a batch of draws into x̂0; the training module
(:mod:`.spm_train`) runs it once per draw and caches the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_pref.errors import ConfigError
from lightning_pref.minipick.proxy_train import PreferencePairs, load_pairs
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import cfg_predict, ddim_step

__all__ = [
    "NoisyExamples",
    "SPMBatch",
    "SPMPairsDataModule",
    "VAL_TIMESTEPS",
    "fixed_examples",
    "predict_x0",
    "sample_examples",
]

VAL_TIMESTEPS = (0, 251, 501, 701, 951)  # SPO's evaluation timesteps (METHODS §2.2)
DRAWS_PER_PAIR = 3  # see spm_train.py for the measurements behind it
BATCH_PAIRS = 64


@dataclass
class SPMBatch:
    """A batch of (pair, t, ε) examples: clean images plus the draw that noises them."""

    key: Tensor  # [B] example ids, unique within a data module (the module's x̂0 cache key)
    images_0: Tensor  # [B, 3, S, S] clean, in [-1, 1]
    images_1: Tensor  # [B, 3, S, S]
    captions: list[str]
    timesteps: Tensor  # [B] integer t of each pair
    noise: Tensor  # [B, 3, S, S] one ε per pair, added to BOTH of its images
    label_0: Tensor  # [B] P(image 0 preferred); 0.5 = tie
    weights: Tensor  # [B] 1 / num_example_per_prompt (ones without the column)

    def select(self, rows: Sequence[int]) -> SPMBatch:
        """The sub-batch of ``rows``."""
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.key.device)
        return SPMBatch(
            self.key[idx],
            self.images_0[idx],
            self.images_1[idx],
            [self.captions[i] for i in idx.tolist()],
            self.timesteps[idx],
            self.noise[idx],
            self.label_0[idx],
            self.weights[idx],
        )


@dataclass(frozen=True)
class NoisyExamples:
    """Examples ``(pair, t, ε)`` over a set of pairs; ε is one tensor per example."""

    pairs: PreferencePairs
    pair_index: Tensor  # [E] row of ``pairs``
    timesteps: Tensor  # [E]
    noise: Tensor  # [E, 3, S, S]
    key_offset: int = 0

    def __len__(self) -> int:
        return len(self.pair_index)

    def batch(self, rows: Sequence[int]) -> SPMBatch:
        """Collate examples ``rows`` into an :class:`SPMBatch`."""
        rows_t = torch.as_tensor(list(rows), dtype=torch.long)  # [B]
        p = self.pair_index[rows_t]  # [B]
        weights = self.pairs.weights
        return SPMBatch(
            key=rows_t + self.key_offset,
            images_0=self.pairs.images_0[p],
            images_1=self.pairs.images_1[p],
            captions=[self.pairs.captions[i] for i in p.tolist()],
            timesteps=self.timesteps[rows_t],
            noise=self.noise[rows_t],
            label_0=self.pairs.label_0[p],
            weights=torch.ones(len(p)) if weights is None else weights[p],
        )


def _examples(
    pairs: PreferencePairs, t: Tensor, gen: torch.Generator, offset: int
) -> NoisyExamples:
    n, k = t.shape  # [pairs, draws]
    noise = torch.randn((n * k, *pairs.images_0.shape[1:]), generator=gen)  # [E, 3, S, S]
    index = torch.arange(n).repeat_interleave(k)  # [E]: pair 0's draws, then pair 1's, ...
    return NoisyExamples(pairs, index, t.reshape(-1), noise, offset)


def sample_examples(
    pairs: PreferencePairs,
    draws_per_pair: int,
    seed: int,
    num_train_timesteps: int = 1000,
    key_offset: int = 0,
) -> NoisyExamples:
    """``draws_per_pair`` seeded draws per pair, t stratified over ``[0, num_train_timesteps)``."""
    gen = torch.Generator().manual_seed(seed)
    stratum = torch.arange(draws_per_pair).expand(len(pairs), -1)  # [n, K]
    u = torch.rand(stratum.shape, generator=gen)  # [n, K]
    t = ((stratum + u) * num_train_timesteps / draws_per_pair).long()
    return _examples(pairs, t.clamp(max=num_train_timesteps - 1), gen, key_offset)


def fixed_examples(
    pairs: PreferencePairs, timesteps: Sequence[int], seed: int, key_offset: int = 0
) -> NoisyExamples:
    """Every pair at every one of ``timesteps``, with seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.tensor(list(timesteps), dtype=torch.long).expand(len(pairs), -1)  # [n, K]
    return _examples(pairs, t, gen, key_offset)


class SPMPairsDataModule(LightningDataModule):
    """MiniPick pairs (ties kept) as seeded noisy-x̂0 examples for the step-aware scorer.

    Args:
        data_dir: the MiniPick asset cache (read by
            :class:`~lightning_pref.minipick.cached.SPMDataModule`, which builds the pairs there).
        pairs_dir: the folder of the parquet pairs; None: the pairs asset of ``data_dir``.
        image_size: side the images are decoded to.
        draws_per_pair: (t, ε) draws per training pair.
        val_timesteps: every validation pair is scored at each of these.
        batch_size: examples per batch.
        max_val_pairs: cap on validation pairs (None = all).
        num_train_timesteps: length of the base model's noise schedule.
        seed: seed of the draws and of the shuffling.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        pairs_dir: str | None = None,
        image_size: int = 16,
        draws_per_pair: int = DRAWS_PER_PAIR,
        val_timesteps: Sequence[int] = VAL_TIMESTEPS,
        batch_size: int = BATCH_PAIRS,
        max_val_pairs: int | None = None,
        num_train_timesteps: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir, self.pairs_dir = data_dir, pairs_dir
        self.image_size, self.draws_per_pair = image_size, draws_per_pair
        self.val_timesteps = list(val_timesteps)
        self.batch_size, self.max_val_pairs = batch_size, max_val_pairs
        self.num_train_timesteps, self.seed = num_train_timesteps, seed
        self.train_examples: NoisyExamples | None = None
        self.val_examples: NoisyExamples | None = None

    def pairs_path(self) -> Path:
        """Folder of the parquet pairs (built into the asset cache if needed)."""
        if self.pairs_dir is None:
            raise ConfigError(
                "SPMPairsDataModule needs pairs_dir (SPMDataModule finds the cached pairs)"
            )
        return Path(self.pairs_dir)

    def prepare_data(self) -> None:
        """Build the pairs if the cache lacks them (one process builds)."""
        self.pairs_path()

    def setup(self, stage: str | None = None) -> None:
        """Decode the pairs and draw the examples (training keys first, then validation)."""
        if self.train_examples is not None:
            return
        folder = self.pairs_path()
        train = load_pairs(folder, "train", self.image_size)
        val = load_pairs(folder, "validation", self.image_size)
        if self.max_val_pairs is not None and len(val) > self.max_val_pairs:
            m = self.max_val_pairs
            weights = None if val.weights is None else val.weights[:m]
            val = PreferencePairs(
                val.images_0[:m], val.images_1[:m], val.captions[:m], val.label_0[:m], weights
            )
        self.train_examples = sample_examples(
            train, self.draws_per_pair, self.seed, self.num_train_timesteps
        )
        self.val_examples = fixed_examples(
            val, self.val_timesteps, self.seed + 1, key_offset=len(self.train_examples)
        )

    def _loader(self, examples: NoisyExamples | None, shuffle: bool) -> DataLoader:
        assert examples is not None, "setup() was not called"
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            range(len(examples)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=examples.batch,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training examples (a seeded order per run)."""
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation pairs at each of ``val_timesteps``, in order."""
        return self._loader(self.val_examples, shuffle=False)


@torch.no_grad()
def predict_x0(
    policy: DiffusionPolicy, batch: SPMBatch, guidance_scale: float = 5.0
) -> tuple[Tensor, Tensor]:
    """x̂0 of both images of each pair, noised to ``batch.timesteps`` with the same ``batch.noise``.

    ``x_t = sqrt(ā_t) x0 + sqrt(1 - ā_t) ε`` (DDPM forward noising), one CFG forward of the frozen
    UNet, then the DDIM x0 prediction (clamped when the scheduler has ``clip_sample``). Pixel
    space: MiniPick's base model has no VAE.

    Returns:
        ``[B, 3, S, S]`` x̂0 of the first images and of the second images.

    Raises:
        ConfigError: if the policy is a latent model (it has a VAE).
    """
    if policy.vae is not None:
        raise ConfigError("predict_x0 noises pixels: it needs a pixel-space model (no VAE)")
    x0 = torch.cat([batch.images_0, batch.images_1])  # [2B, 3, S, S]
    t = batch.timesteps.repeat(2)  # [2B]
    x_t = policy.add_noise(x0, batch.noise.repeat(2, 1, 1, 1), t)  # one ε for both images
    cond = policy.encode_prompt(batch.captions).repeat(2, 1, 1)  # [2B, L, D]
    uncond = policy.encode_prompt([""] * len(batch.captions)).repeat(2, 1, 1)
    out = cfg_predict(policy, x_t, t, cond, uncond, guidance_scale)  # [2B, 3, S, S]
    x0_hat = ddim_step(policy, out, x_t, t, t - 1).pred_x0  # [2B, 3, S, S]
    return x0_hat[: len(t) // 2], x0_hat[len(t) // 2 :]
