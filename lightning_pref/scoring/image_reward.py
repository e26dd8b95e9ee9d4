"""ImageReward (Xu et al. 2023, arXiv 2304.05977) on transformers' BLIP modules."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import (
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
    PreTrainedTokenizerBase,
)

from lightning_pref.errors import ModelLoadError, first_line
from lightning_pref.scoring.aesthetic import RewardMLP
from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.clip import (
    ClipPreprocess,
    load_tokenizer,
    load_weights_file,
    resolve_folder,
)
from lightning_pref.scoring.convert import convert_image_reward_state_dict

__all__ = ["IMAGE_REWARD_MEAN", "IMAGE_REWARD_STD", "ImageReward", "blip_configs"]

IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
BERT_TOKENIZER = "google-bert/bert-base-uncased"
IMAGE_REWARD_MEAN = 0.16717362830052426  # ImageReward/ImageReward.py: self.mean
IMAGE_REWARD_STD = 1.0333394966054072  # ImageReward/ImageReward.py: self.std
MAX_TEXT_LENGTH = 35  # ImageReward.score: padding="max_length", max_length=35
_MED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "pad_token_id",
)


def blip_configs(
    med_config: dict, vision_state: dict[str, Tensor], vision_heads: int | None = None
) -> tuple[BlipVisionConfig, BlipTextConfig]:
    """Vision config from the converted ViT's shapes, text config from ``med_config.json``.

    BLIP's ViTs use 64-wide heads (ViT-L: 1024 / 16) and LayerNorm eps 1e-6; the text encoder's
    cross-attention reads ``encoder_hidden_size`` = the ViT width (BLIP sets ``encoder_width``).

    Args:
        med_config: the BERT config of BLIP's ``med.py`` (ImageReward's ``med_config.json``).
        vision_state: converted ``BlipVisionModel`` weights.
        vision_heads: attention heads of the ViT; None = width // 64.
    """
    width = vision_state["embeddings.class_embedding"].shape[-1]
    patch = vision_state["embeddings.patch_embedding.weight"].shape[-1]
    grid = round((vision_state["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    depth = 1 + max(int(k.split(".")[2]) for k in vision_state if k.startswith("encoder.layers."))
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=vision_heads or width // 64,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    text_kwargs = {k: med_config[k] for k in _MED_KEYS if k in med_config}
    text = BlipTextConfig(**text_kwargs, encoder_hidden_size=width, is_decoder=True)
    return vision, text


class ImageReward(Scorer):
    """ImageReward-v1.0 on ``BlipVisionModel`` + ``BlipTextModel``; frozen, timesteps ignored.

    Real checkpoint: hub repo ``THUDM/ImageReward``: ``ImageReward.pt`` (a torch state dict,
    read with ``weights_only=True``) and ``med_config.json`` (BERT-base config of BLIP's text
    encoder, vocab 30524). Keys: ``blip.visual_encoder.*`` (BLIP ViT-L/16: ``cls_token``,
    ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
    mlp.fc2}``, ``norm``), ``blip.text_encoder.*`` (``embeddings.*``,
    ``encoder.layer.N.{attention,crossattention,intermediate,output}.*``) and ``mlp.layers.*``
    (:class:`~lightning_pref.scoring.aesthetic.RewardMLP`); mapped by
    :func:`~lightning_pref.scoring.convert.convert_image_reward_state_dict`. The tokenizer is
    ``bert-base-uncased`` (BLIP adds ``[DEC]``/``[ENC]``, which the score never uses).

    Preprocessing: bicubic short side 224, center crop 224, OpenAI CLIP mean/std. Score, as
    ``ImageReward.score``: ``h = BERT([CLS] caption [SEP] (35 tokens), cross-attending to all ViT
    tokens)[:, 0]``; ``(mlp(h) - 0.16717362830052426) / 1.0333394966054072``. Unlike BLIP's ITM
    head the first token stays ``[CLS]`` (not ``[ENC]``).

    Args:
        pretrained: folder or hub id holding ``ImageReward.pt`` and ``med_config.json``.
        processor_path: folder or hub id of a BERT (``bert-base-uncased``) tokenizer.
        vision_heads: attention heads of the ViT; None = width // 64 (16 for ViT-L).
        antialias: antialias the bicubic resize (closer to the PIL resize of the original).
    """

    def __init__(
        self,
        pretrained: str = IMAGE_REWARD_REPO,
        processor_path: str = BERT_TOKENIZER,
        vision_heads: int | None = None,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        folder = resolve_folder(pretrained, (IMAGE_REWARD_FILE, MED_CONFIG_FILE))
        for name in (IMAGE_REWARD_FILE, MED_CONFIG_FILE):
            if not (folder / name).is_file():
                raise ModelLoadError(f"'{pretrained}' has no {name} (the THUDM/ImageReward layout)")
        med = json.loads((folder / MED_CONFIG_FILE).read_text())
        vision_sd, text_sd, head_sd = convert_image_reward_state_dict(
            load_weights_file(folder / IMAGE_REWARD_FILE)
        )
        try:
            vision_cfg, text_cfg = blip_configs(med, vision_sd, vision_heads)
            self.vision = BlipVisionModel(vision_cfg)
            self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
            self.head = RewardMLP(text_cfg.hidden_size)
            self.vision.load_state_dict(vision_sd)
            self.text.load_state_dict(text_sd)
            self.head.load_state_dict(head_sd)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelLoadError(
                f"'{pretrained}' does not match the ImageReward layout: {first_line(err)}"
            ) from err
        self.tokenizer = self._load_tokenizer(processor_path)
        self.preprocess = ClipPreprocess(vision_cfg.image_size, antialias=antialias)
        self.requires_grad_(False).eval()

    @staticmethod
    def _load_tokenizer(name: str) -> PreTrainedTokenizerBase:
        hint = f"(ImageReward uses {BERT_TOKENIZER})"
        return load_tokenizer(resolve_folder(name), name, hint, ("tokenizer.json", "vocab.txt"))

    def text_features(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """The ``[CLS]`` output ``[N, D]`` of the text encoder cross-attending to the images."""
        dtype = self.head.layers[0].weight.dtype
        pixels = self.preprocess(images).to(dtype)  # [N, 3, c, c]
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # [N, T, Dv]
        tokens = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=MAX_TEXT_LENGTH,
            return_tensors="pt",
        ).to(pixels.device)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=pixels.device)
        out = self.text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        )
        return out.last_hidden_state[:, 0]  # [N, D]

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """ImageReward ``[N]`` of images ``[N, 3, H, W]`` in [-1, 1] against N captions."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
        features = self.text_features(images, captions)  # [N, D]
        reward = self.head(features.to(self.head.layers[0].weight.dtype))  # [N]
        return (reward - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
