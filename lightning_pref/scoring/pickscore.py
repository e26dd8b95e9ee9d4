"""PickScore on transformers' ``CLIPModel``, and the CLIP preprocessing shared by both scorers.

PickScore (Kirstain et al. 2023, arXiv 2305.01569) is CLIP-ViT-H/14 fine-tuned on Pick-a-Pic:
``score = exp(logit_scale) * cos(image_embedding, text_embedding)``. The official weights are
``yuvalkirstain/PickScore_v1``; its tokenizer and image processor live in
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (pass that as ``processor_path``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from transformers import CLIPModel, PreTrainedTokenizerBase

from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.clip import PROCESSOR_FILE, ClipPreprocess, load_clip_parts

__all__ = ["PickScore"]


class PickScore(Scorer):
    """PickScore: ``exp(logit_scale) * cos(img_emb, txt_emb)`` of a CLIP model. Ignores timesteps.

    Args:
        clip: the CLIP model (PickScore_v1 is CLIP-ViT-H/14).
        tokenizer: its tokenizer; captions are truncated to the text model's context length.
        preprocess: image preprocessing; None = OpenAI CLIP statistics at the vision image size.
        logit_scale: multiply by ``exp(logit_scale)`` (PickScore_v1: 100). False returns the raw
            cosine, the scale of SmPO's label-smoothing constants (METHODS §4.1).
    """

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocess: ClipPreprocess | None = None,
        logit_scale: bool = True,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.logit_scale = logit_scale
        self.tokenizer = tokenizer
        size = clip.config.vision_config.image_size
        self.preprocess = preprocess if preprocess is not None else ClipPreprocess(size)
        text_len = clip.config.text_config.max_position_embeddings
        self.max_length = min(int(tokenizer.model_max_length), text_len)

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, both ``[N, L]``, on the model's device."""
        tokens = self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = self.clip.logit_scale.device
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def text_features(self, captions: Sequence[str]) -> Tensor:
        """Projected, unnormalised text embeddings ``[N, P]``."""
        input_ids, attention_mask = self.tokenize(captions)
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.clip.text_projection(pooled.pooler_output)

    def image_features(self, pixel_values: Tensor, timesteps: Tensor | None = None) -> Tensor:
        """Projected, unnormalised image embeddings ``[N, P]`` of CLIP pixel values."""
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output  # [N, D]
        return self.clip.visual_projection(pooled)

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Scores ``[N]`` of images ``[N, 3, H, W]`` in [-1, 1]; ``timesteps`` ``[N]``, None = 0."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
        dtype = self.clip.logit_scale.dtype
        pixels = self.preprocess(images).to(dtype)  # [N, 3, c, c]
        img = self.image_features(pixels, timesteps)  # [N, P]
        txt = self.text_features(captions)  # [N, P]
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        cosine = (img * txt).sum(dim=-1)  # [N]
        return self.clip.logit_scale.exp() * cosine if self.logit_scale else cosine

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str,
        processor_path: str | None = None,
        antialias: bool = True,
        logit_scale: bool = True,
    ) -> PickScore:
        """Load a CLIP folder or hub id (``yuvalkirstain/PickScore_v1``), never remote code.

        Args:
            pretrained: folder or hub id with ``config.json`` and CLIP weights.
            processor_path: folder or hub id with the tokenizer and ``preprocessor_config.json``
                (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` for PickScore_v1); None = ``pretrained``.
            antialias: antialias the bicubic resize (see :class:`ClipPreprocess`).
            logit_scale: multiply by ``exp(logit_scale)``; False returns the raw cosine.

        Raises:
            ModelLoadError: one line naming what is missing and how to fix it.
        """
        clip, tokenizer, preprocess, _ = load_clip_parts(pretrained, processor_path, antialias)
        return cls(clip, tokenizer, preprocess, logit_scale)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write CLIP (safetensors), tokenizer and ``preprocessor_config.json`` to ``folder``."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(str(root))
        self.tokenizer.save_pretrained(str(root))
        (root / PROCESSOR_FILE).write_text(json.dumps(self.preprocess.to_config(), indent=2))
        return root
