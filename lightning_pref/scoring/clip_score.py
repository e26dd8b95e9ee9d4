"""CLIPScore (Hessel et al. 2021, arXiv 2104.08718) on transformers' ``CLIPModel``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.pickscore import PickScore

__all__ = ["CLIPScore"]

CLIP_L14 = "openai/clip-vit-large-patch14"


class CLIPScore(Scorer):
    """CLIPScore ``weight * max(cos(img_emb, txt_emb), 0)`` per image, frozen; timesteps ignored.

    Real checkpoint: ``openai/clip-vit-large-patch14`` (CLIP ViT-L/14; weights, tokenizer and
    ``preprocessor_config.json`` in one repo): bicubic short side 224, center crop 224, OpenAI
    mean/std; captions truncated to 77 tokens. Embeddings are the projected pooled features
    (``get_image_features`` / ``get_text_features``), L2-normalised.

    Convention (``weight = 100``, the default) is torchmetrics' ``CLIPScore``: ``100 * cos``,
    clamped at 0. torchmetrics clamps the *batch mean*; this class clamps each image, which gives
    the same mean whenever every cosine is >= 0 (always the case for real image-caption pairs,
    whose CLIP-L/14 cosines lie near 0.15-0.40). The paper's CLIP-S is ``weight = 2.5`` (with
    ViT-B/32 and a "A photo depicts" prompt prefix, not added here). Diffusion-DPO's
    ``--choice_model clip`` is different again: the raw cosine of open_clip ViT-H-14 (use
    :class:`~lightning_pref.scoring.PretrainedPickScore` with ``logit_scale: false`` on
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` for that). torchmetrics' own class is not used: it
    breaks on transformers 5.

    Args:
        pretrained: folder or hub id of a CLIP model.
        processor_path: folder or hub id of its tokenizer and preprocessor; None = ``pretrained``.
        weight: the multiplier ``w``.
        clamp: clamp at 0 (False returns ``weight * cos``, which can be negative).
        antialias: antialias the bicubic resize (closer to the PIL resize of the processor).
    """

    def __init__(
        self,
        pretrained: str = CLIP_L14,
        processor_path: str | None = None,
        weight: float = 100.0,
        clamp: bool = True,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.model = PickScore.from_pretrained(
            pretrained, processor_path, antialias=antialias, logit_scale=False
        )
        self.weight = weight
        self.clamp = clamp
        self.requires_grad_(False).eval()

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """CLIPScores ``[N]`` of images ``[N, 3, H, W]`` in [-1, 1] against N captions."""
        score = self.weight * self.model(images, captions)  # [N]
        return score.clamp(min=0) if self.clamp else score
