"""Noise-tracked preference pairs (PNAPO): generated latents with the prior noise of each image.

PNAPO (arXiv 2605.09433) turns a (prompt, winner, loser) triple into a sextuple that keeps the
noise x_T each image was generated from and the reward gap. :func:`generate_noise_pairs` makes
such pairs with a flow policy: per prompt, ``num_candidates`` seeded x_T are sampled with the Euler
ODE (:func:`~lightning_pref.models.sampling.flow_euler`), decoded and scored; the best and the
worst form the pair. A folder holds ``pairs.safetensors`` (``latents_w``, ``latents_l``,
``noise_w``, ``noise_l``: ``[N, C, h, w]``; ``reward_gap``: ``[N]``) and ``captions.json``.
:class:`NoisePairDataModule` reads it into :class:`~lightning_pref.types.NoisePairBatch`,
``pref_prob = σ(reward_gap)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from lightning_pref.data.base import PairDataModule
from lightning_pref.errors import DataError
from lightning_pref.models.sampling import derive_seed, flow_euler
from lightning_pref.types import NoisePairBatch

__all__ = ["NoisePairDataModule", "NoisePairs", "generate_noise_pairs"]

PAIRS, CAPTIONS = "pairs.safetensors", "captions.json"
_KEYS = ("latents_w", "latents_l", "noise_w", "noise_l", "reward_gap")


@torch.no_grad()
def generate_noise_pairs(
    policy: Any,
    prompts: Sequence[str],
    scorer: Callable[[Tensor, list[str]], Tensor],
    out: str | Path,
    num_candidates: int = 4,
    num_steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 0,
) -> Path:
    """Sample, score and pair ``num_candidates`` images per prompt; write the folder ``out``.

    Candidate j of prompt i starts from x_T drawn with the seed ``derive_seed(seed, i, j)``.

    Args:
        policy: a built flow policy (:class:`~lightning_pref.models.FlowPolicy`).
        prompts: one pair per prompt.
        scorer: ``scorer(images [k, 3, H, W] in [-1, 1], captions) -> [k]`` rewards.
        out: the folder to write.
        num_candidates: images per prompt (the best and the worst are kept).
        num_steps: Euler steps.
        guidance_scale: CFG (SD3) or the embedded guidance (FLUX).
        seed: base seed.
    """
    if not getattr(policy, "is_flow", False):
        raise DataError("noise-tracked pairs need a flow policy (FlowPolicy or FluxPolicy)")
    rows: dict[str, list[Tensor]] = {k: [] for k in _KEYS}
    device, k = policy.unet.device, num_candidates
    for i, prompt in enumerate(prompts):
        seeds = [derive_seed(seed, i, j) for j in range(k)]
        gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        shape = (1, *policy.latent_shape)
        x_T = torch.cat([torch.randn(shape, generator=g, device=device) for g in gens])
        cond = policy.encode_prompt([prompt] * k)
        uncond = policy.encode_prompt([""] * k)
        latents = flow_euler(policy, x_T, cond, uncond, num_steps, guidance_scale)  # [k, C, h, w]
        rewards = scorer(policy.decode_latents(latents), [prompt] * k).float()
        win, lose = int(rewards.argmax()), int(rewards.argmin())
        for key, value in (("latents_w", latents[win]), ("latents_l", latents[lose]),
                           ("noise_w", x_T[win]), ("noise_l", x_T[lose])):  # fmt: skip
            rows[key].append(value.float().cpu())
        rows["reward_gap"].append((rewards[win] - rewards[lose]).cpu().reshape(()))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.stack(v).contiguous() for k, v in rows.items()}, str(folder / PAIRS))
    (folder / CAPTIONS).write_text(json.dumps(list(prompts), ensure_ascii=False))
    return folder


class NoisePairs(Dataset):
    """The pairs of a :func:`generate_noise_pairs` folder; captions dropped with a seeded draw.

    Args:
        folder: the pairs folder.
        proportion_empty_prompts: each pair's caption is "" with this probability, drawn per
            pair and epoch from ``seed``.
        seed: seed of those draws.
    """

    def __init__(self, folder: str | Path, proportion_empty_prompts: float = 0.0, seed: int = 0):
        folder = Path(folder).expanduser()
        if not (folder / PAIRS).is_file() or not (folder / CAPTIONS).is_file():
            raise DataError(
                f"'{folder}' holds no noise-tracked pairs ({PAIRS} and {CAPTIONS}); make them "
                "with lightning_pref.data.generate_noise_pairs"
            )
        self.tensors = load_file(str(folder / PAIRS))
        missing = [k for k in _KEYS if k not in self.tensors]
        if missing:
            raise DataError(f"'{folder / PAIRS}' lacks {', '.join(missing)}")
        self.captions = json.loads((folder / CAPTIONS).read_text())
        self.dropout, self.seed = proportion_empty_prompts, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)  # the resumable sampler's (epoch, i)
        item = {k: self.tensors[k][i] for k in _KEYS}
        draw = random.Random(derive_seed(self.seed, "caption", epoch, i)).random()
        item["caption"] = "" if draw < self.dropout else self.captions[i]
        return item


def collate_noise_pairs(items: list[dict[str, Any]]) -> NoisePairBatch:
    """Stack :class:`NoisePairs` items into a batch; ``pref_prob = σ(reward_gap)``."""
    stack = {k: torch.stack([item[k] for item in items]) for k in _KEYS}
    return NoisePairBatch(
        stack["latents_w"],
        stack["latents_l"],
        stack["noise_w"],
        stack["noise_l"],
        [item["caption"] for item in items],
        torch.sigmoid(stack["reward_gap"].float()),
    )


class NoisePairDataModule(PairDataModule):
    """Noise-tracked pairs (PNAPO) from folders written by :func:`generate_noise_pairs`.

    Args:
        train_dir: the training pairs folder.
        val_dir: the validation pairs folder; None: no validation.
        batch_size: pairs per batch and device.
        val_batch_size: validation pairs per batch; None: ``batch_size``.
        num_workers: DataLoader workers.
        proportion_empty_prompts: caption dropout (:class:`NoisePairs`).
        seed: shuffle and dropout seed; None: the run's ``--seed_everything``.
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        proportion_empty_prompts: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed, None)
        self.train_dir, self.val_dir, self.dropout = train_dir, val_dir, proportion_empty_prompts

    def setup(self, stage: str | None = None) -> None:
        """Read the folders."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = NoisePairs(self.train_dir, self.dropout, self.seed)
        if stage in (None, "fit", "validate") and self.val_set is None and self.val_dir:
            self.val_set = NoisePairs(self.val_dir, 0.0, self.seed)

    def collate_fn(self) -> Callable[[list[dict[str, Any]]], NoisePairBatch]:
        """:func:`collate_noise_pairs`."""
        return collate_noise_pairs

    def empty_train_message(self) -> str:
        """Named when the training folder holds no pairs."""
        return f"'{self.train_dir}' holds no noise-tracked pairs"
