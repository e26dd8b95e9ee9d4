"""Key-name converters from original reward-model checkpoints to transformers modules.

* :func:`convert_open_clip_state_dict`: an open_clip ``CLIP`` (ViT vision tower, default text
  tower; e.g. HPSv2's ViT-H-14) to a transformers ``CLIPModel``; :func:`open_clip_config` builds
  the matching ``CLIPConfig`` from the tensor shapes.
* :func:`convert_image_reward_state_dict`: ImageReward's ``ImageReward.pt`` (a BLIP ViT under
  ``blip.visual_encoder``, a BERT with cross-attention under ``blip.text_encoder``, an MLP under
  ``mlp``) to a ``BlipVisionModel``, a ``BlipTextModel`` and the reward head. The ViT renames
  follow transformers' own ``convert_blip_original_pytorch_to_hf.py``; the BERT names already
  match ``BlipTextModel`` (it is a port of BLIP's ``med.py``).
"""

from __future__ import annotations

import math
import re

from torch import Tensor
from transformers import CLIPConfig

__all__ = [
    "convert_image_reward_state_dict",
    "convert_open_clip_state_dict",
    "open_clip_config",
    "strip_prefix",
]

# open_clip ResidualAttentionBlock -> transformers CLIPEncoderLayer (in_proj is split apart)
_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_CLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_CLIP_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_IGNORED = ("attn_mask",)  # the causal-mask buffer some open_clip versions save


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop a DDP-style ``prefix`` from every key that has it."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def convert_open_clip_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map open_clip ``CLIP`` keys to transformers ``CLIPModel`` keys.

    ``[visual.]transformer.resblocks.N.attn.in_proj_{weight,bias}`` (rows ``[q; k; v]``, as in
    ``nn.MultiheadAttention``) split into ``self_attn.{q,k,v}_proj``; ``visual.proj`` ``[W, P]``
    and ``text_projection`` ``[W, P]`` are right-multiplied in open_clip, so they become the
    transposed ``visual_projection.weight`` / ``text_projection.weight`` ``[P, W]``.

    Args:
        state_dict: open_clip weights (a leading ``module.`` is stripped).

    Raises:
        KeyError: a key this mapping does not know (e.g. a custom text tower or attention pool).
    """
    out: dict[str, Tensor] = {}
    for key, value in strip_prefix(state_dict).items():
        if key in _IGNORED:
            continue
        if key in _CLIP_TOP:
            out[_CLIP_TOP[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif match := _CLIP_BLOCK_KEY.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            out.update(_convert_block(f"{tower}.encoder.layers.{match.group(2)}", match[3], value))
        else:
            raise KeyError(f"unknown open_clip key '{key}'")
    return out


def _convert_block(layer: str, name: str, value: Tensor) -> dict[str, Tensor]:
    """One residual-block tensor: split ``in_proj`` into q/k/v, rename the rest."""
    if name.startswith("attn.in_proj_"):
        kind = name.removeprefix("attn.in_proj_")  # weight [3W, W] or bias [3W]
        q, k, v = value.chunk(3, dim=0)
        parts = zip("qkv", (q, k, v), strict=True)
        return {f"{layer}.self_attn.{p}_proj.{kind}": t for p, t in parts}
    module, _, kind = name.rpartition(".")
    if module not in _CLIP_BLOCK:
        raise KeyError(f"unknown open_clip residual-block key '{name}'")
    return {f"{layer}.{_CLIP_BLOCK[module]}.{kind}": value}


def open_clip_config(
    state_dict: dict[str, Tensor],
    vision_heads: int = 16,
    text_heads: int = 16,
    hidden_act: str = "gelu",
) -> CLIPConfig:
    """The ``CLIPConfig`` of an open_clip ViT checkpoint, read from its tensor shapes.

    Head counts are not in the shapes: open_clip's ViT-H-14 has 16 vision heads (width 1280,
    ``head_width`` 80) and 16 text heads (width 1024). ViT-H-14 uses exact GELU (``hidden_act``
    ``"gelu"``; OpenAI's own models use ``"quick_gelu"``). ``eos_token_id = 2`` selects
    transformers' legacy pooling at ``input_ids.argmax(-1)``, which is open_clip's pooling rule.

    Args:
        state_dict: open_clip weights (a leading ``module.`` is stripped).
        vision_heads: attention heads of the vision tower.
        text_heads: attention heads of the text tower.
        hidden_act: activation of both MLPs.
    """
    sd = strip_prefix(state_dict)

    def layers(prefix: str) -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
        return 1 + max(int(m.group(1)) for k in sd if (m := pattern.match(k)))

    width_v = sd["visual.class_embedding"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
    vision = dict(
        hidden_size=width_v,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers("visual."),
        num_attention_heads=vision_heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=hidden_act,
    )
    text = dict(
        vocab_size=sd["token_embedding.weight"].shape[0],
        hidden_size=sd["token_embedding.weight"].shape[1],
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers(""),
        num_attention_heads=text_heads,
        max_position_embeddings=sd["positional_embedding"].shape[0],
        hidden_act=hidden_act,
        eos_token_id=2,
    )
    projection_dim = sd["text_projection"].shape[1]
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


# BLIP ViT (timm-style) -> transformers BlipVisionModel, as in convert_blip_original_pytorch_to_hf
_BLIP_VIT = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def _convert_blip_vit_key(key: str) -> str:
    for pattern, repl in _BLIP_VIT:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"unknown BLIP ViT key 'visual_encoder.{key}'")


def convert_image_reward_state_dict(
    state_dict: dict[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Split ``ImageReward.pt`` into ``BlipVisionModel``, ``BlipTextModel`` and head weights.

    ``blip.visual_encoder.*`` is renamed for ``BlipVisionModel``; ``blip.text_encoder.*`` keeps
    its names (``BlipTextModel`` is a port of BLIP's ``med.py``) except the ``position_ids``
    buffer and an unused pooler; ``mlp.layers.*`` goes to the head as ``layers.*``. Other keys
    (BLIP's projections, ITM head, momentum encoders, if saved) are not used by the score.

    Args:
        state_dict: the ImageReward checkpoint's weights (a leading ``module.`` is stripped).
    """
    vision: dict[str, Tensor] = {}
    text: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    for key, value in strip_prefix(state_dict).items():
        if key.startswith("blip.visual_encoder."):
            vision[_convert_blip_vit_key(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith("blip.text_encoder."):
            name = key.removeprefix("blip.text_encoder.")
            if name != "embeddings.position_ids" and not name.startswith("pooler."):
                text[name] = value
        elif key.startswith("mlp."):
            head[key.removeprefix("mlp.")] = value
    return vision, text, head
