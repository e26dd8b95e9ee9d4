"""OfflinePairModule: training on fixed preference pairs (Diffusion-DPO and its family)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_pref.data.latent_cache import sample_posterior
from lightning_pref.data.relabel import relabel_pairs
from lightning_pref.errors import ConfigError
from lightning_pref.models.fast import FastPath
from lightning_pref.models.noising import NoisingStrategy
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import ReferenceMode
from lightning_pref.modules.denoising import DenoisingModule
from lightning_pref.objectives.base import PairObjective
from lightning_pref.scoring.base import Scorer
from lightning_pref.types import (
    DenoisePair,
    ImagePairBatch,
    LatentPairBatch,
    NoisePairBatch,
    ObjectiveOutput,
    PairBatch,
)

PairInput = ImagePairBatch | LatentPairBatch | NoisePairBatch

__all__ = ["OfflinePairModule"]


class OfflinePairModule(DenoisingModule):
    """Noises both images of each pair, runs policy and reference, and applies a pair objective.

    As in the official Diffusion-DPO train.py (METHODS §1.1): latents are sampled from the VAE
    posterior every step, one timestep and one noise draw are shared by winner and loser, the
    policy sees all 2B images in one forward and the reference in one no-grad forward.

    Args:
        policy: the diffusion model being tuned.
        objective: a pair objective (DiffusionDPO, SFT, ...).
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        reference: ``auto``, ``copy`` or ``adapters_off``.
        seed: seed of the per-step generators; None: the run's ``--seed_everything``.
        shared_timestep: winner and loser get the same t (official: True).
        shared_noise: winner and loser get the same ε (official: True).
        timestep_range: sample t uniformly in ``[low, high)``; None = the full schedule.
        noising: how x0 becomes x_t and the target (forward noising, DDIM or ReNoise
            inversion, ...); None = the objective's own (``objective.default_noising()``).
        fast: speed options (:class:`~lightning_pref.models.FastPath`); None: the plain path.
        relabel: AI feedback (Diffusion-DPO's ``--choice_model``, METHODS §1.2): a frozen scorer
            that re-orders every training pair (the higher-scored image wins, a tie keeps the
            order; the caption before dropout is scored) and makes its label hard; None keeps the
            data's labels. Needs image batches (a latent cache cannot be re-scored).

    Batches are decoded images (:class:`ImagePairBatch`) or rows of a latent cache
    (:class:`LatentPairBatch`, ``python -m lightning_pref cache-latents``); for a fixed seed both
    give the same latents, embeddings and loss.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: PairObjective,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        reference: ReferenceMode = "auto",
        seed: int | None = None,
        shared_timestep: bool = True,
        shared_noise: bool = True,
        timestep_range: tuple[int, int] | None = None,
        noising: NoisingStrategy | None = None,
        fast: FastPath | None = None,
        relabel: Scorer | None = None,
    ) -> None:
        super().__init__(
            policy, objective, optimizer, lr_scheduler, reference, seed, timestep_range, noising,
            fast,
        )  # fmt: skip
        self.relabel = None if relabel is None else relabel.requires_grad_(False).eval()
        self.pairs_relabelled = 0
        self.shared_timestep = shared_timestep
        self.shared_noise = shared_noise

    def relabelled(self, batch: PairInput) -> PairInput:
        """The batch re-ordered by the ``relabel`` scorer (unchanged without one)."""
        if self.relabel is None:
            return batch
        if not isinstance(batch, ImagePairBatch):
            raise ConfigError("relabel needs image batches: a latent cache cannot be re-scored")
        self.relabel.eval()
        out = relabel_pairs(batch, self.relabel, captions=batch.raw_captions)
        self.pairs_relabelled += out.num_swapped
        self.log("train/relabel_swap_rate", out.swapped.float().mean(), on_step=True,
                 batch_size=len(out.swapped))  # fmt: skip
        return out.batch

    def to_latents(self, batch: PairInput, generator: torch.Generator) -> PairBatch:
        """Encode images (VAE posterior sample) and captions (frozen text encoder)."""
        if isinstance(batch, LatentPairBatch):
            return self.cached_latents(batch, generator)
        if isinstance(batch, NoisePairBatch):  # generated latents and their prior noises
            embeds = self.policy.encode_prompt(batch.captions)  # [B, L, D]
            parts = (batch.latents_w, batch.latents_l, batch.noise_w, batch.noise_l)
            lat_w, lat_l, n_w, n_l = (x.to(self.policy.compute_dtype) for x in parts)
            return PairBatch(lat_w, lat_l, embeds, batch.pref_prob.float(), n_w, n_l)
        if not self.objective.uses_loser:
            latents_w = self.policy.encode_images(batch.pixels_w, generator)  # [B, C, h, w]
            embeds = self.policy.encode_prompt(batch.captions)  # [B, L, D]
            return PairBatch(latents_w, latents_w, embeds, batch.pref_prob.float())
        pixels = torch.cat([batch.pixels_w, batch.pixels_l])  # [2B, 3, H, W]
        latents = self.policy.encode_images(pixels, generator)  # [2B, C, h, w]
        latents_w, latents_l = latents.chunk(2)
        embeds = self.policy.encode_prompt(batch.captions)  # [B, L, D]
        return PairBatch(latents_w, latents_l, embeds, batch.pref_prob.float())

    def cached_latents(self, batch: LatentPairBatch, generator: torch.Generator) -> PairBatch:
        """Latents drawn from cached posteriors: the same draws as :meth:`to_latents` on images."""
        self._check_cache_shapes(batch)
        vae = self.policy.vae
        scale = float(vae.config.scaling_factor) if vae is not None else 1.0
        shift = float(vae.config.get("shift_factor") or 0.0) if vae is not None else 0.0
        embeds = batch.prompt_embeds.to(self.policy.compute_dtype)  # [B, L, D]
        pref_prob = batch.pref_prob.float()
        dtype = vae.dtype if vae is not None else torch.float32
        if not self.objective.uses_loser:
            std_w = None if batch.std_w is None else batch.std_w.to(dtype)
            latents_w = sample_posterior(batch.mean_w.to(dtype), std_w, scale, generator, shift)
            latents_w = latents_w.to(self.policy.compute_dtype)
            return PairBatch(latents_w, latents_w, embeds, pref_prob)
        mean = torch.cat([batch.mean_w, batch.mean_l]).to(dtype)  # [2B, C, h, w]
        std = None
        if batch.std_w is not None and batch.std_l is not None:
            std = torch.cat([batch.std_w, batch.std_l]).to(dtype)
        latents = sample_posterior(mean, std, scale, generator, shift)
        latents = latents.to(self.policy.compute_dtype)
        latents_w, latents_l = latents.chunk(2)  # [B, C, h, w] each
        return PairBatch(latents_w, latents_l, embeds, pref_prob)

    def _check_cache_shapes(self, batch: LatentPairBatch) -> None:
        """A cache built for another model fails here with one line."""
        unet = self.policy.unet.config
        width = batch.prompt_embeds.shape[-1]
        expected = unet.get("cross_attention_dim") or unet.get("joint_attention_dim")  # UNet, SD3
        channels = self.policy.latent_shape[0]
        if batch.mean_w.shape[1] != channels or width != expected:
            raise ConfigError(
                f"the latent cache does not fit this model: {batch.mean_w.shape[1]} latent "
                f"channels and {width}-wide text embeddings, the model expects "
                f"{channels} and {expected}; rebuild it with "
                "`python -m lightning_pref cache-latents` for this model"
            )

    def denoise_pair(self, pairs: PairBatch, generator: torch.Generator) -> DenoisePair:
        """Noise the pair, run policy (and reference if needed), return what the objective reads."""
        if not self.objective.uses_loser:
            return self._denoise_winner(pairs, generator)
        bsz = pairs.latents_w.shape[0]
        x0 = torch.cat([pairs.latents_w, pairs.latents_l])  # [2B, C, h, w]
        t = self.sample_timesteps(bsz if self.shared_timestep else 2 * bsz, generator)
        t = t.repeat(2) if self.shared_timestep else t  # [2B]
        if pairs.noise_w is not None and pairs.noise_l is not None:  # each image's own x_T
            noise = torch.cat([pairs.noise_w, pairs.noise_l])  # [2B, C, h, w]
        else:
            shape = (bsz if self.shared_noise else 2 * bsz, *x0.shape[1:])
            noise = self.sample_noise(shape, generator, x0.dtype)
            noise = noise.repeat(2, 1, 1, 1) if self.shared_noise else noise  # [2B, C, h, w]
        embeds = pairs.prompt_embeds.repeat(2, 1, 1)  # [2B, L, D]
        x_t, target, t = self.noise(x0, t, noise, embeds, generator)  # [2B, C, h, w], [2B]
        pred = self.policy(x_t, t, embeds)  # [2B, C, h, w]
        ref_w = ref_l = None
        if self.objective.requires_reference:
            ref_w, ref_l = self.reference_predict(x_t, t, embeds).chunk(2)
        pred_w, pred_l = pred.chunk(2)
        target_w, target_l = target.chunk(2)
        return DenoisePair(
            pred_w, pred_l, target_w, target_l, ref_w, ref_l, t[:bsz], pairs.pref_prob
        )

    def _denoise_winner(self, pairs: PairBatch, generator: torch.Generator) -> DenoisePair:
        """Winner-only pass for objectives that ignore the loser (SFT)."""
        x0 = pairs.latents_w  # [B, C, h, w]
        t = self.sample_timesteps(x0.shape[0], generator)
        noise = self.sample_noise(x0.shape, generator, x0.dtype)
        x_t, target, t = self.noise(x0, t, noise, pairs.prompt_embeds, generator)
        pred = self.policy(x_t, t, pairs.prompt_embeds)
        ref = None
        if self.objective.requires_reference:
            ref = self.reference_predict(x_t, t, pairs.prompt_embeds)
        return DenoisePair(pred, pred, target, target, ref, ref, t, pairs.pref_prob)

    def batch_size(self, batch: PairInput) -> int:
        """Pairs in the batch; 0 (every row corrupt) means skip."""
        return int(batch.pref_prob.shape[0])

    def shared_step(self, batch: PairInput, stage: str, batch_idx: int) -> ObjectiveOutput:
        """Encode, noise, denoise and score one batch."""
        generator = self.step_generator(stage, batch_idx)
        return self.objective(self.denoise_pair(self.to_latents(batch, generator), generator))
