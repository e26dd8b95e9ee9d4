"""Real Stable Diffusion folders with random weights, made from ``sd_configs/`` of the real files.

:func:`random_weights_folder` copies a real diffusers folder (model_index, scheduler, tokenizers,
every ``config.json``) and writes weights drawn at random from each model's own config, in the
dtype asked for. Full size keeps every config byte for byte (the slow tests); ``small=True``
shrinks the widths and depths of each model (the default suite's stand-ins) but keeps every other
key: prediction type, ``use_linear_projection``, ``upcast_attention``, the missing
``scaling_factor``, ``force_upcast``, the SDXL size conditioning and the real vocabulary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

SD15 = "sd15_stable-diffusion-v1-5"
SD21 = "sd21_stable-diffusion-2-1"
SDXL = "sdxl_stable-diffusion-xl-base-1.0"
SD3 = "sd3_stable-diffusion-3-medium-diffusers"
SD35L = "sd35l_stable-diffusion-3.5-large"
FLUX_DEV = "flux1-dev_FLUX.1-dev"
FLUX_SCHNELL = "flux1-schnell_FLUX.1-schnell"  # only its transformer and scheduler differ
T5_WIDTH = 64  # the stand-in T5's width = the stand-in transformer's joint_attention_dim
TEXT_WIDTH = 32  # each stand-in text encoder's width (SDXL: two of them, 64 together)
_MODELS = {
    "unet": (UNet2DConditionModel, "diffusion_pytorch_model"),
    "transformer": (SD3Transformer2DModel, "diffusion_pytorch_model"),
    "vae": (AutoencoderKL, "diffusion_pytorch_model"),
    "text_encoder": (CLIPTextModel, "model"),
    "text_encoder_2": (CLIPTextModelWithProjection, "model"),
    "text_encoder_3": (T5EncoderModel, "model"),
}
_CLASSES = {  # by a config's architectures / _class_name (FLUX's text_encoder_2 is T5)
    "CLIPTextModel": CLIPTextModel,
    "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
    "T5EncoderModel": T5EncoderModel,
    "FluxTransformer2DModel": FluxTransformer2DModel,
}


def _small_text(config: dict) -> dict:
    return {
        **config,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": TEXT_WIDTH,
    }


def _small_unet(config: dict) -> dict:
    blocks = len(config["block_out_channels"])
    heads = config["attention_head_dim"]
    text = TEXT_WIDTH * (2 if config.get("addition_embed_type") == "text_time" else 1)
    small = {
        **config,
        "block_out_channels": [32] + [64] * (blocks - 1),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": [2] + [4] * (blocks - 1) if isinstance(heads, list) else 4,
        "cross_attention_dim": text,
    }
    if "transformer_layers_per_block" in config:
        small["transformer_layers_per_block"] = 1
    if config.get("addition_embed_type") == "text_time":
        small["addition_time_embed_dim"] = 8
        small["projection_class_embeddings_input_dim"] = TEXT_WIDTH + 6 * 8
    return small


def _small_transformer(config: dict) -> dict:
    if config["_class_name"] == "FluxTransformer2DModel":
        return {
            **config,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": T5_WIDTH,
            "pooled_projection_dim": TEXT_WIDTH,
            "axes_dims_rope": [4, 6, 6],
        }
    small = {
        **config,
        "num_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "caption_projection_dim": 16,
        "joint_attention_dim": T5_WIDTH,
        "pooled_projection_dim": 2 * TEXT_WIDTH,
    }
    if config.get("dual_attention_layers"):
        small["dual_attention_layers"] = [0]
    return small


def _small_t5(config: dict) -> dict:
    return {**config, "d_model": T5_WIDTH, "d_ff": 37, "d_kv": 8, "num_heads": 2, "num_layers": 1}


def _small_vae(config: dict) -> dict:
    blocks = len(config["block_out_channels"])
    return {**config, "block_out_channels": [32] * blocks, "layers_per_block": 1}


_SHRINK = {
    "unet": _small_unet,
    "vae": _small_vae,
    "text_encoder": _small_text,
    "text_encoder_2": _small_text,
    "transformer": _small_transformer,
    "text_encoder_3": _small_t5,
}


def random_weights_folder(
    source: Path,
    out: Path,
    dtype: torch.dtype = torch.float32,
    small: bool = True,
    variant: str | None = None,
    seed: int = 0,
    values: torch.dtype | None = None,
) -> Path:
    """Copy the real folder ``source`` to ``out`` with random weights in ``dtype``.

    Args:
        source: a real diffusers folder of ``sd_configs/``.
        out: the new folder (created).
        dtype: the weights' dtype on disk.
        small: shrink each model (see the module docstring); False keeps the real sizes.
        variant: write ``*.{variant}.safetensors`` files (as ``variant="fp16"`` downloads).
        seed: initialisation seed.
        values: round the weights through this dtype first (float16: an fp32 folder that holds
            exactly the values of the fp16 one); None = ``dtype``.
    """
    values = values or dtype
    shutil.copytree(source, out)
    for name, (cls, stem) in _MODELS.items():
        config_file = out / name / "config.json"
        if not config_file.is_file():
            continue
        real = json.loads(config_file.read_text())
        cls = _CLASSES.get(real.get("_class_name") or (real.get("architectures") or [""])[0], cls)
        config = (_small_t5 if cls is T5EncoderModel else _SHRINK[name])(real) if small else real
        torch.manual_seed(seed)
        model = _build(cls, config)
        suffix = f".{variant}.safetensors" if variant else ".safetensors"
        tensors = {
            k: v.to(values).to(dtype).contiguous().clone() for k, v in model.state_dict().items()
        }
        save_file(tensors, str(out / name / f"{stem}{suffix}"), metadata={"format": "pt"})
        if small:  # the shrunk sizes, with every other key of the real config
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _build(cls: type, config: dict) -> torch.nn.Module:
    if cls is T5EncoderModel:
        return T5EncoderModel(T5Config(**config))
    if cls in (CLIPTextModel, CLIPTextModelWithProjection):
        return cls(CLIPTextConfig(**config))
    return cls.from_config(config)


def one_dpo_step(policy: torch.nn.Module, size: int = 64) -> torch.nn.Module:
    """One flow/diffusion DPO step (β 100, LoRA policies: reference = adapters off) on two random
    image pairs of ``size`` px; returns the module with the gradients in place."""
    from functools import partial

    from lightning_pref.modules import OfflinePairModule
    from lightning_pref.objectives import DiffusionDPO
    from lightning_pref.types import ImagePairBatch

    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    module = OfflinePairModule(policy, DiffusionDPO(beta=100.0), optimizer=optimizer)
    torch.manual_seed(0)  # LoRA's gaussian initialisation
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    batch = ImagePairBatch(
        pixels_w=torch.rand(2, 3, size, size, generator=g) * 2 - 1,
        pixels_l=torch.rand(2, 3, size, size, generator=g) * 2 - 1,
        captions=["a red circle", "a photo of a cat"],
        pref_prob=torch.ones(2),
    )
    module.shared_step(batch, "train", 0).loss.backward()
    return module
