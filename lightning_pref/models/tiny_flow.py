"""A tiny SD3-shaped rectified-flow model built in code, saved as a diffusers SD3 pipeline folder.

For tests and CPU smoke runs, like :mod:`lightning_pref.models.tiny`: a 1-layer
``SD3Transformer2DModel``, two tiny CLIP text encoders with projection (the character-level
tokenizer of :func:`~lightning_pref.models.tiny.tiny_tokenizer`, one padding with ``!`` as
CLIP-G does), no T5 (the pipeline's zeros stand in for it), a 16-channel VAE that halves the image
size, with SD3's ``shift_factor``/``scaling_factor``, and SD3's scheduler (shift 3.0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from lightning_pref.models.components import FlowComponents
from lightning_pref.models.flow import FlowPolicy, TimestepSampling
from lightning_pref.models.flux import FluxPolicy
from lightning_pref.models.tiny import text_config, tiny_tokenizer

__all__ = [
    "TinyFlowPolicy",
    "TinyFluxPolicy",
    "build_tiny_flux_components",
    "build_tiny_sd3_components",
    "save_tiny_flux_pipeline",
    "save_tiny_sd3_pipeline",
]

CLIP_WIDTH = 16  # each tiny CLIP's width and projection (pooled: 32)
TEXT_LENGTH = 16


def _vae(
    sample_size: int,
    latent_channels: int = 16,
    scaling_factor: float = 1.5305,  # SD3's
    shift_factor: float = 0.0609,
) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=sample_size * 2,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3_components(sample_size: int = 8, seed: int = 0) -> FlowComponents:
    """Seeded tiny SD3 parts (latents ``[16, sample_size, sample_size]``, images twice that)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=2 * CLIP_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_WIDTH,
        out_channels=16,
        pos_embed_max_size=sample_size,
    )
    encoders = [
        CLIPTextModelWithProjection(text_config(CLIP_WIDTH, TEXT_LENGTH, projection_dim=CLIP_WIDTH))
        for _ in range(2)
    ]
    tokenizers = [tiny_tokenizer(TEXT_LENGTH), tiny_tokenizer(TEXT_LENGTH, pad_token="!")]
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return FlowComponents(
        transformer, scheduler, _vae(sample_size), [*encoders, None], [*tokenizers, None]
    )


def save_tiny_sd3_pipeline(folder: str | Path, sample_size: int = 8, seed: int = 0) -> Path:
    """Save the tiny model as a diffusers ``StableDiffusion3Pipeline`` folder."""
    parts = build_tiny_sd3_components(sample_size, seed)
    pipe = StableDiffusion3Pipeline(
        transformer=parts.transformer,
        scheduler=parts.scheduler,
        vae=parts.vae,
        text_encoder=parts.text_encoders[0],
        tokenizer=parts.tokenizers[0],
        text_encoder_2=parts.text_encoders[1],
        tokenizer_2=parts.tokenizers[1],
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)


class TinyFlowPolicy(FlowPolicy):
    """A seeded tiny SD3-shaped flow model built in code (:func:`build_tiny_sd3_components`).

    Args:
        sample_size: latent size (images are twice that).
        seed: initialisation seed.
        lora_rank: LoRA rank, or None for full fine-tuning.
        lora_alpha: LoRA alpha; None = rank.
        timestep_sampling: ``uniform``, ``logit_normal`` or ``mode``.
    """

    tiny_name = "<tiny-sd3>"

    def __init__(
        self,
        sample_size: int = 8,
        seed: int = 0,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        timestep_sampling: TimestepSampling = "logit_normal",
    ) -> None:
        super().__init__(
            pretrained=self.tiny_name,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            check_source=False,
            timestep_sampling=timestep_sampling,
        )
        self.tiny_kwargs = {"sample_size": sample_size, "seed": seed}
        self.sample_size = sample_size  # FLUX's sampler size (SD3 reads its transformer config)

    def _load_components(self) -> FlowComponents:
        return build_tiny_sd3_components(**self.tiny_kwargs)  # type: ignore[arg-type]


def build_tiny_flux_components(sample_size: int = 8, seed: int = 0) -> FlowComponents:
    """Seeded tiny FLUX.1-dev parts, images twice ``sample_size``.

    A 1+1-block transformer with a guidance embedding, CLIP-L and T5 stand-ins (T5 reads the
    character-level tokenizer's ids), a 4-channel VAE, FLUX's resolution-shifted scheduler.
    """
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    clip = CLIPTextModel(text_config(CLIP_WIDTH, TEXT_LENGTH))
    t5 = T5EncoderModel(
        T5Config(vocab_size=514, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1)
    )
    vae = _vae(sample_size, latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    tokenizers = [tiny_tokenizer(TEXT_LENGTH), tiny_tokenizer(512, pad_token="!"), None]
    return FlowComponents(transformer, scheduler, vae, [clip, t5, None], tokenizers)


def save_tiny_flux_pipeline(folder: str | Path, sample_size: int = 8, seed: int = 0) -> Path:
    """Save the tiny FLUX model as a diffusers ``FluxPipeline`` folder."""
    from diffusers import FluxPipeline

    parts = build_tiny_flux_components(sample_size, seed)
    FluxPipeline(
        transformer=parts.transformer,
        scheduler=parts.scheduler,
        vae=parts.vae,
        text_encoder=parts.text_encoders[0],
        tokenizer=parts.tokenizers[0],
        text_encoder_2=parts.text_encoders[1],
        tokenizer_2=parts.tokenizers[1],
    ).save_pretrained(str(folder))
    return Path(folder)


class TinyFluxPolicy(TinyFlowPolicy, FluxPolicy):
    """A tiny FLUX.1-dev-shaped model (build_tiny_flux_components); TinyFlowPolicy's args."""

    tiny_name = "<tiny-flux>"

    def _load_components(self) -> FlowComponents:
        return build_tiny_flux_components(**self.tiny_kwargs)  # type: ignore[arg-type]
