"""HPSv2 / HPSv2.1 (Wu et al. 2023, arXiv 2306.09341) on transformers' ``CLIPModel``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, PreTrainedTokenizerBase

from lightning_pref.errors import ModelLoadError, first_line
from lightning_pref.models.loading import looks_like_local_path
from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.clip import (
    PROCESSOR_FILE,
    ClipPreprocess,
    load_clip,
    load_tokenizer,
    load_weights_file,
    resolve_folder,
)
from lightning_pref.scoring.convert import convert_open_clip_state_dict, open_clip_config
from lightning_pref.scoring.pickscore import PickScore

__all__ = ["HPSv2", "load_open_clip_checkpoint", "pad_to_square"]

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"  # HPSv2.0: HPS_v2_compressed.pt (scores not comparable)
HPS_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def pad_to_square(images: Tensor, fill: float = -1.0) -> Tensor:
    """Pad ``[N, 3, H, W]`` to ``[N, 3, S, S]``, ``S = max(H, W)``, centred (extra pixel last)."""
    h, w = images.shape[-2:]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    return F.pad(images, (left, side - w - left, top, side - h - top), value=fill)


def load_open_clip_checkpoint(
    path: Path, vision_heads: int = 16, text_heads: int = 16
) -> CLIPModel:
    """A ``CLIPModel`` from an open_clip checkpoint file (``{"state_dict": ...}`` or bare).

    Raises:
        ModelLoadError: one line, when the file is unreadable or not an open_clip ViT CLIP.
    """
    state = load_weights_file(path)
    state = state.get("state_dict", state)
    try:
        clip = CLIPModel(open_clip_config(state, vision_heads, text_heads))
        clip.load_state_dict(convert_open_clip_state_dict(state))
    except (KeyError, RuntimeError, ValueError) as err:
        raise ModelLoadError(
            f"'{path}' is not an open_clip ViT CLIP checkpoint: {first_line(err)}"
        ) from err
    return clip.eval()


def _load_hps_clip(
    pretrained: str, checkpoint_file: str, vision_heads: int, text_heads: int
) -> CLIPModel:
    """A converted folder (``config.json``) or an open_clip ``.pt`` (file, folder or hub id)."""
    path = Path(pretrained).expanduser()
    if looks_like_local_path(pretrained) and path.is_file():
        return load_open_clip_checkpoint(path, vision_heads, text_heads)
    folder = resolve_folder(pretrained, ("*.json", "*.safetensors", checkpoint_file))
    if (folder / "config.json").is_file():
        return load_clip(pretrained)[0]
    if not (folder / checkpoint_file).is_file():
        raise ModelLoadError(
            f"'{pretrained}' has neither a transformers CLIP (config.json) nor {checkpoint_file}"
        )
    return load_open_clip_checkpoint(folder / checkpoint_file, vision_heads, text_heads)


def _load_processor(name: str, clip: CLIPModel) -> tuple[PreTrainedTokenizerBase, ClipPreprocess]:
    """Tokenizer and preprocessing from a folder or hub id (OpenAI statistics if no config)."""
    folder = resolve_folder(name)
    hint = f"(HPSv2 uses ViT-H-14's: pass processor_path {HPS_PROCESSOR})"
    tokenizer = load_tokenizer(folder, name, hint, ("tokenizer.json", "vocab.json"))
    if (folder / PROCESSOR_FILE).is_file():
        return tokenizer, ClipPreprocess.from_config_file(folder / PROCESSOR_FILE, antialias=True)
    return tokenizer, ClipPreprocess(clip.config.vision_config.image_size, antialias=True)


class HPSv2(Scorer):
    """Human Preference Score v2.1: ``cos(img_emb, txt_emb)`` of a fine-tuned ViT-H-14; frozen.

    Real checkpoint: ``HPS_v2.1_compressed.pt`` in the hub repo ``xswu/HPSv2``, an open_clip
    ViT-H-14 ``{"state_dict": ...}`` with open_clip key names (``visual.conv1.weight``,
    ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``visual.proj``,
    ``transformer.resblocks.N.*``, ``token_embedding.weight``, ``text_projection``, ...). It is
    converted on load by :func:`~lightning_pref.scoring.convert.convert_open_clip_state_dict`
    (``torch.load(weights_only=True)``); :meth:`save_pretrained` writes the converted model, which
    then loads as a transformers folder. Tokenizer and preprocessor: ViT-H-14's
    (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; OpenAI mean/std, 224 px, 77 tokens).

    Score, as ``hpsv2/img_score.py``: open_clip returns L2-normalised features and HPS is the
    diagonal of ``image_features @ text_features.T``, i.e. the raw cosine (no logit scale;
    ~0.2-0.35; papers quote 100x). HPSv2's validation transform resizes the longest side to 224
    and pads with black (open_clip ``ResizeMaxSize``); ``pad_to_square`` pads first, then
    resizes, which is the same up to bicubic edge effects and identical for square images.

    Args:
        pretrained: the ``.pt`` file, a folder or hub id holding ``checkpoint_file``, or a folder
            with a converted transformers CLIP.
        processor_path: folder or hub id of the tokenizer and preprocessor; None = ``pretrained``
            (a converted folder written by :meth:`save_pretrained`).
        checkpoint_file: the open_clip file name inside a folder / hub repo.
        pad_to_square: pad non-square images (HPSv2's resize-longest-side transform).
        vision_heads: attention heads of the open_clip vision tower (ViT-H-14: 16).
        text_heads: attention heads of the open_clip text tower (ViT-H-14: 16).
    """

    def __init__(
        self,
        pretrained: str = HPS_REPO,
        processor_path: str | None = HPS_PROCESSOR,
        checkpoint_file: str = HPS_FILE,
        pad_to_square: bool = True,
        vision_heads: int = 16,
        text_heads: int = 16,
    ) -> None:
        super().__init__()
        clip = _load_hps_clip(pretrained, checkpoint_file, vision_heads, text_heads)
        tokenizer, preprocess = _load_processor(processor_path or pretrained, clip)
        self.model = PickScore(clip, tokenizer, preprocess, logit_scale=False)
        self.pad_to_square = pad_to_square
        self.requires_grad_(False).eval()

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """HPS ``[N]`` (cosines) of images ``[N, 3, H, W]`` in [-1, 1] against N captions."""
        if self.pad_to_square:
            images = pad_to_square(images)
        return self.model(images, captions)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the converted CLIP (safetensors), tokenizer and preprocessor config."""
        return self.model.save_pretrained(folder)
