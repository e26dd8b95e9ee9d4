"""The diffusers/transformers parts a diffusion policy is made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = ["DiffusionComponents", "FlowComponents"]


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


@dataclass
class FlowComponents:
    """One rectified-flow text-to-image model in the diffusers SD3 / SD3.5 layout.

    ``text_encoders`` and ``tokenizers`` are CLIP-L and CLIP-G (both with projection) and T5
    (None when the folder has no ``text_encoder_3/``, as SD3 pipelines allow: T5's embeddings are
    then zeros).
    """

    transformer: Any  # diffusers SD3Transformer2DModel
    scheduler: Any  # diffusers FlowMatchEulerDiscreteScheduler
    vae: AutoencoderKL
    text_encoders: list[Any]  # [CLIP-L, CLIP-G, T5 or None]
    tokenizers: list[Any]  # [CLIP-L, CLIP-G, T5 or None]
