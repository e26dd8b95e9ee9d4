"""CLIP helpers shared by the CLIP-based scorers (PickScore, HPS, ImageReward, aesthetic, SPM).

Differentiable CLIP preprocessing, finding a model folder (local, or a cached hub snapshot, with a
one-line error naming the fix when offline), reading a weights file, and loading CLIP, a tokenizer
and CLIP's preprocessing. Every error is one line naming what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from lightning_pref.errors import ModelLoadError, first_line
from lightning_pref.models.files import check_weights_file, check_weights_folder
from lightning_pref.models.loading import looks_like_local_path

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PROCESSOR_FILE",
    "ClipPreprocess",
    "load_clip",
    "load_clip_parts",
    "load_tokenizer",
    "load_weights_file",
    "resolve_folder",
    "resolve_weights",
]

# transformers.image_utils.OPENAI_CLIP_MEAN / _STD: the defaults of CLIPImageProcessor.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILE = "preprocessor_config.json"
_META_PATTERNS = ("*.json", "*.txt")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class ClipPreprocess(nn.Module):
    """Differentiable CLIP preprocessing of images ``[N, 3, H, W]`` in [-1, 1].

    Bicubic resize of the short side to ``size`` (long side ``int(L * size / S + 0.5)``), center
    crop to ``crop_size`` (offset ``(h - crop) // 2``), map to [0, 1] and clamp (bicubic
    overshoots; PIL clips too), then ``(x - mean) / std``. An image already at the resized shape is
    not interpolated. ``antialias=True`` is closer to the PIL resize of the official PickScore
    processor; SPO's step-aware model was trained with ``F.interpolate`` without antialiasing.

    Args:
        size: short side after resizing (CLIPImageProcessor ``size.shortest_edge``).
        crop_size: side of the square center crop; None = ``size``.
        mean: per-channel mean of [0, 1] pixels.
        std: per-channel standard deviation of [0, 1] pixels.
        antialias: antialias the bicubic resize when downscaling.
    """

    def __init__(
        self,
        size: int = 224,
        crop_size: int | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        antialias: bool = False,
    ) -> None:
        super().__init__()
        self.size = size
        self.crop_size = size if crop_size is None else crop_size
        if self.crop_size > size:
            raise ValueError(f"crop_size {self.crop_size} is larger than the resized side {size}")
        self.antialias = antialias
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Return CLIP pixel values ``[N, 3, crop, crop]`` (float32 or wider)."""
        x = images.to(torch.promote_types(images.dtype, torch.float32))  # [N, 3, H, W]
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(
                x,
                size=(new_h, new_w),
                mode="bicubic",
                align_corners=False,
                antialias=self.antialias,
            )
        top, left = (new_h - self.crop_size) // 2, (new_w - self.crop_size) // 2
        x = x[..., top : top + self.crop_size, left : left + self.crop_size]  # [N, 3, c, c]
        x = ((x + 1) / 2).clamp(0, 1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @classmethod
    def from_config_file(cls, path: Path, antialias: bool = False) -> ClipPreprocess:
        """Read size, crop size, mean and std from a CLIPImageProcessor JSON file."""
        cfg = json.loads(path.read_text())
        size, crop = cfg.get("size", 224), cfg.get("crop_size")
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        mean = cfg.get("image_mean", OPENAI_CLIP_MEAN)
        return cls(int(size), crop, mean, cfg.get("image_std", OPENAI_CLIP_STD), antialias)

    def to_config(self) -> dict:
        """This preprocessing as a CLIPImageProcessor ``preprocessor_config.json`` dict."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "resample": 3,  # PIL bicubic
            "do_center_crop": True,
            "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": self.mean.flatten().tolist(),
            "image_std": self.std.flatten().tolist(),
            "do_convert_rgb": True,
        }


def resolve_folder(name: str, allow_patterns: Sequence[str] = _META_PATTERNS) -> Path:
    """A local folder for ``name``: the folder itself, or the hub snapshot of ``allow_patterns``.

    Raises:
        ModelLoadError: one line; for a hub id that is neither reachable nor cached it names the
            fix (download on a connected machine and pass the local folder).
    """
    if looks_like_local_path(name):
        root = Path(name).expanduser()
        if not root.is_dir():
            raise ModelLoadError(f"model folder '{name}' does not exist")
        return root
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=list(allow_patterns)))
    except Exception as err:  # offline, not cached, gated, unknown id: many exception types
        raise ModelLoadError(
            f"cannot load '{name}' from the Hugging Face Hub (no network access, or not cached). "
            f"Download it on a connected machine (`hf download {name} --local-dir DIR`, or "
            "`huggingface-cli download` on older hubs), copy DIR here and pass DIR instead"
        ) from err


def resolve_weights(name: str) -> Path:
    """Like :func:`resolve_folder`, with weights: safetensors, else ``pytorch_model.bin``."""
    folder = resolve_folder(name, (*_META_PATTERNS, "*.safetensors"))
    if not looks_like_local_path(name) and not any(folder.glob("*.safetensors")):
        folder = resolve_folder(name, (*_META_PATTERNS, "pytorch_model.bin"))
    check_weights_folder(folder)
    return folder


def load_weights_file(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors, or from a torch pickle with ``weights_only=True``.

    Raises:
        ModelLoadError: one line, when the file cannot be read as plain tensors.
    """
    check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and format errors come in many types
        raise ModelLoadError(f"cannot read weights from '{path}': {first_line(err)}") from err


def load_clip(name: str) -> tuple[CLIPModel, Path]:
    """A CLIP model (eval mode; no tokenizer needed) and its resolved folder."""
    folder = resolve_weights(name)
    try:
        return CLIPModel.from_pretrained(str(folder)).eval(), folder
    except Exception as err:  # format/shape/missing-file errors come in many types
        raise ModelLoadError(f"failed to load CLIP from '{name}': {first_line(err)}") from err


def load_tokenizer(
    folder: Path,
    name: str,
    hint: str,
    files: Sequence[str] = _TOKENIZER_FILES,
    hint_on_failure: bool = False,
) -> PreTrainedTokenizerBase:
    """The tokenizer in ``folder`` (resolved from ``name``), never remote code.

    Args:
        folder: the local folder holding the tokenizer.
        name: what the user passed (folder or hub id), for the error messages.
        hint: where the right tokenizer lives, appended to the missing-files error.
        files: at least one of these must exist (transformers 5 otherwise builds an empty
            tokenizer from a bare ``config.json`` without complaint).
        hint_on_failure: also append ``hint`` when the files exist but fail to load.

    Raises:
        ModelLoadError: one line, when none of ``files`` exists or the tokenizer fails to load.
    """
    if not any((folder / f).is_file() for f in files):
        raise ModelLoadError(f"'{name}' has no {' or '.join(files)} {hint}")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # tokenizer errors come in many types
        suffix = f" {hint}" if hint_on_failure else ""
        raise ModelLoadError(
            f"failed to load a tokenizer from '{name}': {first_line(err)}{suffix}"
        ) from err


def load_clip_parts(
    pretrained: str, processor_path: str | None, antialias: bool
) -> tuple[CLIPModel, PreTrainedTokenizerBase, ClipPreprocess, Path]:
    """CLIP model, tokenizer, preprocessing and the resolved weights folder."""
    folder = resolve_weights(pretrained)
    proc_name = processor_path or pretrained
    proc_folder = resolve_folder(proc_name) if processor_path else folder
    try:
        clip = CLIPModel.from_pretrained(str(folder))
    except Exception as err:  # format/shape/missing-file errors come in many types
        raise ModelLoadError(f"failed to load CLIP from '{pretrained}': {first_line(err)}") from err
    hint = "(PickScore_v1 keeps it in laion/CLIP-ViT-H-14-laion2B-s32B-b79K: pass processor_path)"
    tokenizer = load_tokenizer(proc_folder, proc_name, hint, hint_on_failure=True)
    config_file = next(
        (f / PROCESSOR_FILE for f in (proc_folder, folder) if (f / PROCESSOR_FILE).is_file()), None
    )
    if config_file is None:
        preprocess = ClipPreprocess(clip.config.vision_config.image_size, antialias=antialias)
    else:
        preprocess = ClipPreprocess.from_config_file(config_file, antialias)
    return clip.eval(), tokenizer, preprocess, folder
