"""Tiny Stable-Diffusion-shaped models built in code, for tests and CPU smoke runs.

Nothing is downloaded: the tokenizer is a byte-level CLIP BPE vocabulary with no merges (every
character is a token), written to a temporary folder and loaded with ``CLIPTokenizer``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lightning_pref.models.components import DiffusionComponents

__all__ = ["build_tiny_components", "save_tiny_clip", "save_tiny_pipeline", "tiny_tokenizer"]


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's BPE, in CLIP's vocabulary order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tiny_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    """A 514-token character-level CLIP tokenizer (BOS 512, EOS/pad 513)."""
    chars = _byte_chars()
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="lp_tok_"))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)


def build_tiny_components(
    sample_size: int = 8,
    block_out_channels: tuple[int, ...] = (8, 16),
    cross_attention_dim: int = 16,
    with_vae: bool = True,
    prediction_type: str = "epsilon",
    max_text_length: int = 16,
    seed: int = 0,
) -> DiffusionComponents:
    """Build a seeded tiny SD-layout model.

    With ``with_vae`` the VAE downsamples by 2, so images are ``2 * sample_size`` pixels and
    latents have 4 channels; without it the UNet denoises 3-channel pixels of ``sample_size``.
    """
    torch.manual_seed(seed)
    channels = 4 if with_vae else 3
    groups = min(4, block_out_channels[0])
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * (len(block_out_channels) - 1)),
        up_block_types=(*["CrossAttnUpBlock2D"] * (len(block_out_channels) - 1), "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=groups,
    )
    vae = None
    if with_vae:
        vae = AutoencoderKL(
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
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_text_length,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return DiffusionComponents(unet, scheduler, text_encoder, tiny_tokenizer(max_text_length), vae)


def save_tiny_pipeline(folder: str | Path, **kwargs: object) -> Path:
    """Save a tiny model as a diffusers ``StableDiffusionPipeline`` folder (the SD1.5 layout)."""
    parts = build_tiny_components(**kwargs)  # type: ignore[arg-type]
    if parts.vae is None:
        raise ValueError("the Stable Diffusion layout needs a VAE; pass with_vae=True")
    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.noise_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
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
