"""MiniPick's base text-to-image model: a pixel-space diffusers UNet with a word-level text encoder.

Sized by the calibration in the MiniPick issue: about 1.7M UNet parameters at 16×16 px, which train
at roughly 0.26 s per step at batch 64 on 2 CPU cores. The text encoder is a small CLIP text
transformer over a word vocabulary; like SD's, it stays frozen (at its seeded random init): its
outputs are distinct per word and position, and the UNet's cross-attention learns to read them.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from lightning_pref.minipick.world import all_specs, caption
from lightning_pref.models.components import DiffusionComponents

__all__ = ["SPECIAL_TOKENS", "build_minipick_components", "minipick_tokenizer", "minipick_vocab"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
MAX_TEXT_LENGTH = 12  # BOS + at most 9 words + EOS, padded


def minipick_vocab() -> dict[str, int]:
    """Every word of every template caption, after the four special tokens."""
    words = sorted({w for spec in all_specs() for w in caption(spec).split()})
    return {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}


def minipick_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: ``[BOS] words [EOS] [PAD]...``; unknown words → [UNK]."""
    vocab = minipick_vocab()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=MAX_TEXT_LENGTH,
    )


def build_minipick_components(
    image_size: int = 16,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    text_dim: int = 64,
    seed: int = 0,
) -> DiffusionComponents:
    """A freshly initialised MiniPick model (no VAE: the UNet denoises RGB pixels)."""
    torch.manual_seed(seed)
    levels = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * (levels - 1)),
        up_block_types=(*["CrossAttnUpBlock2D"] * (levels - 1), "UpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=16,
        norm_num_groups=16,
    )
    tokenizer = minipick_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TEXT_LENGTH,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",  # DDPM's pixel-space schedule (1e-4 → 0.02)
        prediction_type="epsilon",
        clip_sample=True,  # samplers clamp x̂0 to the image range, as pixel-space DDPM does
        steps_offset=1,
    )
    return DiffusionComponents(unet, scheduler, text_encoder, tokenizer, None)
