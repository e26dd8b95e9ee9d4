"""Evaluate a tuned policy against a baseline: gold win rate, scores, diversity, implicit accuracy.

Both models sample the same prompts with the same per-sample seeds (sample ``i`` draws all its
noise from a generator seeded by ``(seed, i)``, whatever the batch size), so base against base
gives identical images. CLI: ``python -m lightning_pref evaluate``
(:mod:`lightning_pref.commands.evaluate`).

- **Win rates** (the gold scorer's is the headline) with 95 % CIs, and every scorer's median, mean
  and std for each model: :mod:`lightning_pref.evaluation.report`.
- **Diversity**: ``k`` images with different seeds for each of the first few prompts; the mean
  over prompts and image pairs of the RMS pixel distance ``||x_a - x_b||_2 / sqrt(3HW)`` of
  images in [-1, 1] (0: identical, 2: opposite). A win rate that rises while diversity collapses
  means the model found one image the scorer likes (mode collapse, reward hacking).
- **Implicit accuracy** on validation pairs (:func:`implicit_accuracy`).
- **Negative-model guidance** (Diffusion-NPO, Self-NPO; :mod:`lightning_pref.models.negative`):
  either
  model can sample with a second network in CFG's unconditional branch (``base_negative``,
  ``tuned_negative``), with the same seeds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_pref.errors import ConfigError, DataError
from lightning_pref.evaluation.report import EvalReport, report_from_scores
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import Denoiser, derive_seed, sample_plan, sample_seeded
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.modules.offline import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.objectives.functional import mse_diff
from lightning_pref.scoring import Scorer

__all__ = [
    "SamplingOptions",
    "evaluate_policies",
    "implicit_accuracy",
    "pixel_diversity",
    "sample_and_score",
    "save_grid",
]


@dataclass(frozen=True)
class SamplingOptions:
    """How both models are sampled (DDIM with CFG) and how their diversity is measured."""

    num_steps: int = 10  # DDIM steps
    guidance_scale: float = 5.0  # classifier-free guidance weight
    eta: float = 0.0  # DDIM eta
    batch_size: int = 64  # images per sampling batch
    samples_per_prompt_for_diversity: int = 4  # images per prompt for diversity; < 2 skips it
    num_diversity_prompts: int = 8  # diversity uses the first this many distinct prompts

    @property
    def sampler(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_pref.models.sampling.sample_seeded`."""
        return {"num_steps": self.num_steps, "guidance_scale": self.guidance_scale, "eta": self.eta}

    def diversity_subset(self, prompts: Sequence[str]) -> list[str]:
        """The distinct prompts diversity is measured on."""
        return list(dict.fromkeys(prompts))[: self.num_diversity_prompts]


def sample_and_score(
    policy: DiffusionPolicy,
    plan: tuple[list[str], list[int]],
    scorers: dict[str, Scorer],
    batch_size: int,
    desc: str,
    **sampling: Any,
) -> dict[str, Tensor]:
    """Sample ``plan`` (captions, seeds) batch by batch and score each batch: ``{name: [N]}``.

    A scorer's parts (:attr:`Scorer.part_names`) come after it, named ``<scorer>.<part>``.
    """
    captions, seeds = plan
    scores: dict[str, list[Tensor]] = {}
    for name, scorer in scorers.items():
        scores[name] = []
        scores.update({f"{name}.{part}": [] for part in scorer.part_names})
    for i in tqdm(range(0, len(captions), batch_size), desc=desc, unit="batch"):
        chunk = captions[i : i + batch_size]
        images = sample_seeded(policy, chunk, seeds[i : i + batch_size], **sampling)
        with torch.no_grad():
            for name, scorer in scorers.items():
                scores[name].append(scorer(images, chunk).double().cpu())
                parts = scorer.parts(images, chunk)
                if set(parts) != set(scorer.part_names):
                    raise ConfigError(
                        f"scorer '{name}' returned parts {sorted(parts)}, but its part_names are "
                        f"{list(scorer.part_names)}: make {type(scorer).__name__}.parts match"
                    )
                for part in scorer.part_names:
                    scores[f"{name}.{part}"].append(parts[part].double().cpu())
    return {name: torch.cat(values) for name, values in scores.items()}


def pixel_diversity(
    policy: DiffusionPolicy, prompts: list[str], seed: int, k: int, **sampling: Any
) -> float:
    """Mean over prompts and image pairs of the RMS pixel distance of ``k`` images per prompt."""
    dists = []
    for i, prompt in enumerate(tqdm(prompts, desc="diversity", unit="prompt")):
        seeds = [derive_seed(seed, "diversity", i, j) for j in range(k)]
        flat = (
            sample_seeded(policy, [prompt] * k, seeds, **sampling).double().flatten(1)
        )  # [k, 3HW]
        pairs = itertools.combinations(range(k), 2)
        dists += [(flat[a] - flat[b]).pow(2).mean().sqrt() for a, b in pairs]
    return float(torch.stack(dists).mean())


def evaluate_policies(
    base: DiffusionPolicy,
    tuned: DiffusionPolicy,
    prompts: Sequence[str],
    scorers: dict[str, Scorer],
    gold: str,
    num_samples: int,
    seed: int,
    options: SamplingOptions | None = None,
    base_negative: Denoiser | None = None,
    tuned_negative: Denoiser | None = None,
) -> EvalReport:
    """Sample both policies with the same seeds, score them with every scorer and compare.

    Args:
        base: the baseline policy.
        tuned: the policy under test.
        prompts: prompts, cycled to reach ``num_samples``.
        scorers: scorers by name, on the policies' device.
        gold: the scorer that decides wins.
        num_samples: images per model.
        seed: seed of every draw.
        options: the sampler and the diversity measurement (default :class:`SamplingOptions`).
        base_negative: the baseline's unconditional-branch network (negative guidance); None:
            ordinary CFG.
        tuned_negative: the same for the tuned policy.

    Returns:
        The report, without ``implicit_acc``.
    """
    if gold not in scorers:
        raise ConfigError(f"the gold scorer '{gold}' is not among the scorers {sorted(scorers)}")
    options = options or SamplingOptions()
    plan = sample_plan(list(prompts), num_samples, seed)
    sampling = options.sampler
    models = (("base", base, base_negative), ("tuned", tuned, tuned_negative))
    base_s, tuned_s = (
        sample_and_score(
            p, plan, scorers, options.batch_size, f"sampling {name}", uncond_denoiser=n, **sampling
        )
        for name, p, n in models
    )
    diversity: tuple[float | None, float | None] = (None, None)
    if (k := options.samples_per_prompt_for_diversity) >= 2:
        subset = options.diversity_subset(prompts)
        base_d, tuned_d = (
            pixel_diversity(p, subset, seed, k, **sampling, uncond_denoiser=n) for _, p, n in models
        )
        diversity = (base_d, tuned_d)
    report = report_from_scores(gold, base_s, tuned_s, diversity, plan, sampling, seed)
    return replace(report, sampler="Euler ODE (flow)") if tuned.is_flow else report


@torch.no_grad()
def implicit_accuracy(
    module: PreferenceModule,
    reference: DiffusionPolicy,
    val_loader: DataLoader,
    seed: int,
    num_draws: int = 4,
) -> float:
    """Fraction of validation pairs whose Diffusion-DPO implicit reward prefers the winner.

    Per pair, DiffusionDPO's ``inside = -0.5·β·((mse_w - mse_l) - (ref_mse_w - ref_mse_l))``
    (β = 1: only the sign matters) is averaged over ``num_draws`` timestep/noise draws made as in
    training by ``OfflinePairModule.to_latents``/``denoise_pair`` (VAE posterior sample; t and
    noise shared by winner and loser; t uniform over the schedule), with ``module``'s policy and
    ``reference``'s UNet; a pair counts if the mean is > 0, so ties count as misses and a policy
    against itself scores 0. Batch ``b`` draws from ``derive_seed(seed, "implicit", b)``.

    Args:
        module: the tuned module (its policy is used).
        reference: the baseline policy (its UNet is the reference).
        val_loader: ``ImagePairBatch``es with the winner first.
        seed: seed of the draws.
        num_draws: timestep/noise draws per pair.

    Raises:
        DataError: if the loader yields no pairs.
    """
    probe = OfflinePairModule(module.policy, DiffusionDPO(), reference="copy")
    probe.reference_unet = reference.unet
    probe.to(module.policy.unet.device)
    hits: list[Tensor] = []
    for b, batch in enumerate(val_loader):
        if batch.pixels_w.shape[0] == 0:
            continue
        batch = move_data_to_device(batch, probe.device)
        generator = torch.Generator(probe.device).manual_seed(derive_seed(seed, "implicit", b))
        pairs = probe.to_latents(batch, generator)
        inside = torch.zeros(batch.pixels_w.shape[0], dtype=torch.float64)  # [B]
        for _ in range(num_draws):
            p = probe.denoise_pair(pairs, generator)
            assert p.ref_pred_w is not None and p.ref_pred_l is not None
            model_diff = mse_diff(p.pred_w, p.pred_l, p.target_w, p.target_l)  # [B]
            ref_diff = mse_diff(p.ref_pred_w, p.ref_pred_l, p.target_w, p.target_l)  # [B]
            inside += -0.5 * (model_diff - ref_diff).double().cpu() / num_draws
        hits.append(inside > 0)
    if not hits:
        raise DataError("no validation pairs for the implicit accuracy")
    return float(torch.cat(hits).double().mean())


def save_grid(
    base_images: Tensor,
    tuned_images: Tensor,
    captions: Sequence[str],
    path: str | Path,
    scale: int = 4,
    max_columns: int = 8,
) -> Tensor:
    """Write a PNG grid: baseline images in row 1, tuned in row 2, one column per caption.

    Images ``[N, 3, H, W]`` in [-1, 1] are upscaled ``scale`` times by nearest neighbour (16 px
    samples stay visible), with 2 px white gutters; the first ``max_columns`` are shown. The
    captions, column by column, go to ``path`` with the suffix ``.txt``.

    Returns:
        The grid as uint8 ``[3, H', W']``, e.g. for TensorBoard.
    """
    n = min(len(base_images), len(tuned_images), len(captions), max_columns)
    h, w = base_images.shape[-2] * scale, base_images.shape[-1] * scale
    grid = Image.new("RGB", (n * (w + 2) + 2, 2 * (h + 2) + 2), (255, 255, 255))
    for row, images in enumerate((base_images, tuned_images)):
        pixels = ((images[:n].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
        for col, image in enumerate(pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()):
            tile = Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST)
            grid.paste(tile, (2 + col * (w + 2), 2 + row * (h + 2)))
    path = Path(path)
    grid.save(path)
    legend = [f"{i + 1}. {c}" for i, c in enumerate(captions[:n])]
    path.with_suffix(".txt").write_text("rows: baseline, tuned; columns:\n" + "\n".join(legend))
    return torch.from_numpy(np.array(grid)).permute(2, 0, 1)
