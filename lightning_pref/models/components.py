"""The diffusers/transformers parts a diffusion policy is made of."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = ["DiffusionComponents"]


@dataclass
class DiffusionComponents:
    """One text-to-image model in Stable Diffusion (1.x/2.x) or SDXL layout.

    ``vae`` is None for a pixel-space model (the denoiser works on images directly).
    ``text_encoder_2``/``tokenizer_2`` are set for SDXL only (OpenCLIP bigG with projection, whose
    pooled output feeds the UNet's ``text_time`` embedding). ``force_zeros_for_empty_prompt`` is
    the SDXL pipeline flag of the same name (``model_index.json``): the empty prompt is encoded
    as all zeros.
    """

    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    force_zeros_for_empty_prompt: bool = False
