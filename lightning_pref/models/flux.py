"""FLUX.1 as a flow policy: ``FluxTransformer2DModel`` with CLIP-L (pooled) and T5.

Built as diffusers' ``FluxPipeline`` builds its inputs: the text conditioning is T5's 512 tokens
``[B, 512, 4096]`` with CLIP-L's pooled output ``[B, 768]`` in one extra row
(:func:`pack_sdxl_conditioning`); latents ``[B, 16, h, w]`` are packed into 2×2 patches
``[B, h/2 · w/2, 64]`` with position ids ``(0, row, column)`` and text ids 0, and the velocity is
unpacked back. The transformer is told ``σ`` (it multiplies by 1000 itself). FLUX.1-dev is
guidance-distilled: its guidance embedding gets ``guidance`` (training; diffusers'
``train_dreambooth_lora_flux.py`` default 3.5) or the sampler's guidance scale, and sampling runs
without an unconditional branch; FLUX.1-schnell has no guidance embedding.

Training levels are those of :class:`~lightning_pref.models.flow.FlowPolicy`: the scheduler's
sigma table read backwards. FLUX's scheduler shifts by resolution (``use_dynamic_shifting``), so
its table at load time is unshifted, ``σ(t) = (t + 1)/1000``, the sigmas diffusers' FLUX training
scripts draw from; sampling shifts by ``mu`` from the image's token count as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_pref.models.components import FlowComponents
from lightning_pref.models.conditioning import pack_sdxl_conditioning, unpack_sdxl_conditioning
from lightning_pref.models.flow import FlowPolicy
from lightning_pref.models.loading import load_flux_components
from lightning_pref.models.policy import TORCH_DTYPES

__all__ = ["FluxPolicy"]

T5_TOKENS = 512  # FluxPipeline's max_sequence_length


def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w]`` → ``[B, h/2 · w/2, 4C]``: 2×2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_latents`."""
    b, _, d = packed.shape
    x = packed.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Position ids ``[h/2 · w/2, 3]``: ``(0, row, column)`` of each patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxPolicy(FlowPolicy):
    """A FLUX.1 (dev or schnell) rectified-flow transformer with CLIP-L, T5 and its VAE.

    Args:
        pretrained: a diffusers FLUX.1 folder (``transformer/``, ``scheduler/``, ``vae/``,
            ``text_encoder{,_2}/``, ``tokenizer{,_2}/``) or hub id.
        guidance: the guidance embedding's value in training (FLUX.1-dev; ignored by schnell).
        sample_size: latent side the sampler starts from (128: 1024 px).
        **kwargs: :class:`~lightning_pref.models.flow.FlowPolicy`'s other arguments (LoRA,
            dtypes, timestep sampling, ...).
    """

    def __init__(
        self,
        pretrained: str = "black-forest-labs/FLUX.1-dev",
        guidance: float = 3.5,
        sample_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(pretrained=pretrained, **kwargs)
        self.guidance, self.sample_size = guidance, sample_size

    def _load_components(self) -> FlowComponents:  # type: ignore[override]
        return load_flux_components(
            self.pretrained, self.revision, self.variant, TORCH_DTYPES[self.frozen_dtype]
        )

    @property
    def uses_cfg(self) -> bool:
        """No classifier-free guidance: FLUX.1 embeds its guidance (dev) or needs none."""
        return False

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)``: the VAE's channels (the transformer takes 4C) and ``sample_size``."""
        return int(self.unet.config.in_channels) // 4, self.sample_size, self.sample_size

    @torch.no_grad()
    def encode_prompt(self, captions: Sequence[str]) -> Tensor:
        """Captions → T5's tokens with CLIP-L's pooled output as one more row ``[B, 513, J]``."""
        captions = list(captions)
        pooled = self.text_encoder(self._token_ids(self.tokenizer, captions)).pooler_output
        ids = self.tokenizer_2(
            captions,
            padding="max_length",
            max_length=T5_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.unet.device)
        t5 = self.text_encoder_2(ids)[0]  # [B, 512, J]
        return pack_sdxl_conditioning(t5, pooled.to(t5.dtype)).to(self.compute_dtype)

    def velocity(
        self,
        unet: nn.Module,
        x_t: Tensor,
        sigma: Tensor,
        prompt_embeds: Tensor,
        guidance: float | None = None,
    ) -> Tensor:
        """The velocity ``[N, C, h, w]`` at noise levels ``sigma`` ``[N]`` (module docstring)."""
        hidden, pooled = unpack_sdxl_conditioning(prompt_embeds, self.flow_pooled_dim)
        n, _, h, w = x_t.shape
        embed = None
        if self.unet.config.guidance_embeds:
            value = self.guidance if guidance is None else guidance
            embed = torch.full((n,), value, device=x_t.device, dtype=torch.float32)
        out = unet(
            hidden_states=pack_latents(x_t),
            timestep=sigma.to(x_t.dtype),
            guidance=embed,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=image_ids(h, w, x_t.device, x_t.dtype),
        ).sample
        return unpack_latents(out, h, w)

    def sampling_sigmas(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``FluxPipeline``'s sigmas: ``linspace(1, 1/n, n)`` shifted, then 0.

        The shift ``mu`` grows linearly with the image's token count between the scheduler's
        base and max sequence lengths (diffusers' ``calculate_shift``).
        """
        h, w = latent_size or (self.sample_size, self.sample_size)
        config = self.noise_scheduler.config
        tokens = (h // 2) * (w // 2)
        base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        mu = low + (high - low) / (top - base) * (tokens - base)
        scheduler = type(self.noise_scheduler).from_config(config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        return torch.as_tensor(scheduler.sigmas).float().to(self.sigmas.device)
