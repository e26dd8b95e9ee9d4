"""Tiny Stable-Diffusion-shaped models (SD1.x, SD2.x v-prediction, SDXL) built in code.

For tests and CPU smoke runs. Nothing is downloaded: the tokenizer is a byte-level CLIP BPE
vocabulary with no merges (every character is a token), written to a temporary folder and loaded
with ``CLIPTokenizer``. The ``save_tiny_*`` functions write real diffusers pipeline folders.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.policy import DiffusionPolicy, PredictionType

__all__ = [
    "TinyDiffusionPolicy",
    "build_tiny_components",
    "build_tiny_sdxl_components",
    "save_tiny_clip",
    "save_tiny_pipeline",
    "save_tiny_sdxl_pipeline",
    "save_tiny_vae",
    "save_tiny_vpred_pipeline",
    "tiny_tokenizer",
]


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's BPE, in CLIP's vocabulary order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tiny_tokenizer(model_max_length: int = 16, pad_token: str | None = None) -> CLIPTokenizer:
    """A 514-token character-level CLIP tokenizer (BOS 512, EOS 513, pad 513 by default).

    ``pad_token="!"`` (id 0) pads as the OpenCLIP tokenizers of SD2.x and SDXL's
    ``tokenizer_2`` do.
    """
    chars = _byte_chars()
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="lp_tok_"))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    extra = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length, **extra)


def _tiny_unet(
    sample_size: int, block_out_channels: tuple[int, ...], channels: int, **config: object
) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * (len(block_out_channels) - 1)),
        up_block_types=(*["CrossAttnUpBlock2D"] * (len(block_out_channels) - 1), "UpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=min(4, block_out_channels[0]),
        **config,  # type: ignore[arg-type]
    )


def _tiny_vae(sample_size: int) -> AutoencoderKL:
    """A VAE that halves the image size (scale factor 2) into 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=sample_size * 2,
    )


def text_config(hidden_size: int, max_text_length: int, **extra: object) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_text_length,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        **extra,
    )


def _tiny_scheduler(prediction_type: str) -> DDPMScheduler:
    """SD's training schedule (scaled linear 0.00085..0.012, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def build_tiny_components(
    sample_size: int = 8,
    block_out_channels: tuple[int, ...] = (8, 16),
    cross_attention_dim: int = 16,
    with_vae: bool = True,
    prediction_type: str = "epsilon",
    max_text_length: int = 16,
    seed: int = 0,
    use_linear_projection: bool = False,
) -> DiffusionComponents:
    """Build a seeded tiny SD-layout model.

    With ``with_vae`` the VAE downsamples by 2, so images are ``2 * sample_size`` pixels and
    latents have 4 channels; without it the UNet denoises 3-channel pixels of ``sample_size``.
    ``use_linear_projection`` gives the UNet SD2.x's linear attention in/out projections.
    """
    torch.manual_seed(seed)
    channels = 4 if with_vae else 3
    unet = _tiny_unet(
        sample_size,
        block_out_channels,
        channels,
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=use_linear_projection,
    )
    vae = _tiny_vae(sample_size) if with_vae else None
    text_encoder = CLIPTextModel(text_config(cross_attention_dim, max_text_length))
    scheduler = _tiny_scheduler(prediction_type)
    return DiffusionComponents(unet, scheduler, text_encoder, tiny_tokenizer(max_text_length), vae)


def build_tiny_sdxl_components(
    sample_size: int = 8,
    block_out_channels: tuple[int, ...] = (8, 16),
    cross_attention_dim: int = 16,
    with_vae: bool = True,
    prediction_type: str = "epsilon",
    max_text_length: int = 16,
    seed: int = 0,
    addition_time_embed_dim: int = 4,
) -> DiffusionComponents:
    """Build a seeded tiny SDXL-layout model.

    Two text encoders of width ``cross_attention_dim // 2`` each (their penultimate states are
    concatenated to ``cross_attention_dim``, as SDXL's 768 + 1280 = 2048); the second one
    projects its pooled output to the same width (SDXL: 1280). The UNet adds the ``text_time``
    embedding of that pooled vector and 6 size ids, so its
    ``projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + pooled`` (SDXL:
    6 * 256 + 1280 = 2816). The empty prompt is encoded as zeros, as in SDXL base.
    """
    torch.manual_seed(seed)
    channels, half = (4 if with_vae else 3), cross_attention_dim // 2
    unet = _tiny_unet(
        sample_size,
        block_out_channels,
        channels,
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + half,
    )
    vae = _tiny_vae(sample_size) if with_vae else None
    text_encoder = CLIPTextModel(text_config(half, max_text_length))
    text_encoder_2 = CLIPTextModelWithProjection(
        text_config(half, max_text_length, projection_dim=half)
    )
    return DiffusionComponents(
        unet,
        _tiny_scheduler(prediction_type),
        text_encoder,
        tiny_tokenizer(max_text_length),
        vae,
        text_encoder_2,
        tiny_tokenizer(max_text_length, pad_token="!"),
        force_zeros_for_empty_prompt=True,
    )


def _sd_pipeline(parts: DiffusionComponents, scheduler: object) -> StableDiffusionPipeline:
    if parts.vae is None:
        raise ValueError("the Stable Diffusion layout needs a VAE; pass with_vae=True")
    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, **kwargs: object) -> Path:
    """Save a tiny model as a diffusers ``StableDiffusionPipeline`` folder (the SD1.5 layout)."""
    parts = build_tiny_components(**kwargs)  # type: ignore[arg-type]
    _sd_pipeline(parts, parts.noise_scheduler).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_vpred_pipeline(folder: str | Path, **kwargs: object) -> Path:
    """Save a tiny v-prediction model in the SD2.x layout (``stabilityai/stable-diffusion-2-1``).

    As SD2.x ships: a ``DDIMScheduler`` config with ``prediction_type="v_prediction"``, a UNet
    with linear attention projections and a tokenizer that pads with ``!``.
    """
    parts = build_tiny_components(
        prediction_type="v_prediction",
        use_linear_projection=True,
        **kwargs,  # type: ignore[arg-type]
    )
    parts.tokenizer = tiny_tokenizer(parts.tokenizer.model_max_length, pad_token="!")
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config, set_alpha_to_one=False)
    _sd_pipeline(parts, scheduler).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_sdxl_pipeline(folder: str | Path, **kwargs: object) -> Path:
    """Save a tiny model as a ``StableDiffusionXLPipeline`` folder (the SDXL base layout).

    The scheduler is saved as ``EulerDiscreteScheduler``, as SDXL base ships it; ``kwargs`` go
    to :func:`build_tiny_sdxl_components`.
    """
    parts = build_tiny_sdxl_components(**kwargs)  # type: ignore[arg-type]
    if parts.vae is None:
        raise ValueError("the SDXL layout needs a VAE; pass with_vae=True")
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        text_encoder_2=parts.text_encoder_2,
        tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer_2,
        unet=parts.unet,
        scheduler=EulerDiscreteScheduler.from_config(parts.noise_scheduler.config),
        force_zeros_for_empty_prompt=parts.force_zeros_for_empty_prompt,
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)


def save_tiny_vae(folder: str | Path, sample_size: int = 8, seed: int = 1) -> Path:
    """Save a tiny VAE alone, config and weights at the folder root (the fp16-fix VAE layout)."""
    torch.manual_seed(seed)
    _tiny_vae(sample_size).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIP (32 px images, byte tokenizer) in the PickScore folder layout."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = {
        "vocab_size": 514,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(folder))
    tiny_tokenizer(16).save_pretrained(str(folder))
    return Path(folder)


class TinyDiffusionPolicy(DiffusionPolicy):
    """A seeded tiny model built in code (see :func:`build_tiny_components`), for tests and demos.

    Args:
        sample_size: latent size of the UNet (images are twice that with the VAE).
        block_out_channels: UNet widths.
        cross_attention_dim: text width.
        with_vae: latent model with a tiny VAE, or pixel-space without one.
        seed: initialisation seed.
        prediction_type: ``epsilon`` or ``v_prediction``.
        lora_rank: LoRA rank, or None for full fine-tuning.
        lora_alpha: LoRA alpha; None = rank.
        sdxl: an SDXL-shaped model (:func:`~lightning_pref.models.build_tiny_sdxl_components`);
            ``cross_attention_dim`` is then the width of both text encoders together.
    """

    def __init__(
        self,
        sample_size: int = 8,
        block_out_channels: Sequence[int] = (8, 16),
        cross_attention_dim: int = 16,
        with_vae: bool = True,
        seed: int = 0,
        prediction_type: PredictionType = "epsilon",
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        sdxl: bool = False,
    ) -> None:
        super().__init__(
            pretrained="<tiny>",
            prediction_type=prediction_type,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            check_source=False,
        )
        self.tiny_kwargs = {
            "sample_size": sample_size,
            "block_out_channels": tuple(block_out_channels),
            "cross_attention_dim": cross_attention_dim,
            "with_vae": with_vae,
            "prediction_type": prediction_type,
            "seed": seed,
        }
        self.sdxl = sdxl

    def _load_components(self) -> DiffusionComponents:
        build = build_tiny_sdxl_components if self.sdxl else build_tiny_components
        return build(**self.tiny_kwargs)  # type: ignore[arg-type]
