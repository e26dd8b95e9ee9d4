"""The LAION aesthetic predictor v2 on transformers' CLIP ViT-L/14, and its MLP head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from lightning_pref.errors import ModelLoadError, first_line
from lightning_pref.models.loading import looks_like_local_path
from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.clip import (
    PROCESSOR_FILE,
    ClipPreprocess,
    load_clip,
    load_weights_file,
    resolve_folder,
)

__all__ = ["AESTHETIC_HEAD_FILE", "LAIONAesthetic", "RewardMLP"]

AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_L14 = "openai/clip-vit-large-patch14"
_HEAD_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class RewardMLP(nn.Module):
    """The MLP head of the LAION aesthetic predictor and of ImageReward (no activations).

    ``Linear(D,1024)-Dropout(.2)-Linear(1024,128)-Dropout(.2)-Linear(128,64)-Dropout(.1)-
    Linear(64,16)-Linear(16,1)``. Parameter names are those of both releases without their
    prefix: ``layers.{0,2,4,6,7}.{weight,bias}`` (indices 1, 3, 5 are the dropouts).

    Args:
        input_size: feature width (768 for CLIP-L/14 embeddings and BLIP's BERT-base).
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Scores ``[N]`` of features ``[N, D]``."""
        return self.layers(features).squeeze(-1)


def _find_head(name: str) -> Path:
    """The head file: ``name`` itself, or ``AESTHETIC_HEAD_FILE`` (or one weights file) in it."""
    if looks_like_local_path(name) and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    folder = resolve_folder(name, ("*.pth", "*.safetensors", "*.json"))
    if (folder / AESTHETIC_HEAD_FILE).is_file():
        return folder / AESTHETIC_HEAD_FILE
    files = sorted(p for p in folder.iterdir() if p.suffix in _HEAD_SUFFIXES)
    if len(files) != 1:
        raise ModelLoadError(
            f"'{name}' holds {len(files)} weights files and no {AESTHETIC_HEAD_FILE}; "
            "pass the head file itself as head_path"
        )
    return files[0]


class LAIONAesthetic(Scorer):
    """LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE``); captions are ignored.

    Real checkpoint: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, the transformers port of
    OpenAI's ``ViT-L/14``) plus the head ``sac+logos+ava1-l14-linearMSE.pth`` from
    github.com/christophschuhmann/improved-aesthetic-predictor, a torch ``state_dict`` with keys
    ``layers.0.weight`` ``[1024, 768]``, ``layers.0.bias``, ``layers.2.*`` ``[128, 1024]``,
    ``layers.4.*`` ``[64, 128]``, ``layers.6.*`` ``[16, 64]``, ``layers.7.*`` ``[1, 16]``
    (:class:`RewardMLP`). It loads with ``torch.load(weights_only=True)``; a ``.safetensors``
    copy with the same keys works too.

    Preprocessing: the CLIP-L/14 image processor (bicubic short side 224, center crop 224, OpenAI
    mean/std; :class:`ClipPreprocess` reads ``preprocessor_config.json`` when present).
    Score: ``head(e / ||e||)`` with ``e = visual_projection(pooled CLIP image feature)`` (768-d),
    as the predictor's inference script and Diffusion-DPO's ``utils/aes_utils.py``; roughly a
    1-10 rating.

    Args:
        head_path: the head file (``.pth`` or ``.safetensors``), or a folder / hub id holding
            ``AESTHETIC_HEAD_FILE`` or a single weights file.
        pretrained: folder or hub id of the CLIP ViT-L/14 weights.
        antialias: antialias the bicubic resize (closer to the PIL resize of the processor).
    """

    def __init__(
        self,
        head_path: str,
        pretrained: str = CLIP_L14,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        clip, folder = load_clip(pretrained)
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        self.head = RewardMLP(self.visual_projection.out_features)
        state = load_weights_file(_find_head(head_path))
        try:
            self.head.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(
                f"'{head_path}' is not an aesthetic head (expected keys layers.0.weight ... "
                f"layers.7.bias for width {self.head.layers[0].in_features}): {first_line(err)}"
            ) from err
        config = folder / PROCESSOR_FILE
        size = clip.config.vision_config.image_size
        self.preprocess = (
            ClipPreprocess.from_config_file(config, antialias)
            if config.is_file()
            else ClipPreprocess(size, antialias=antialias)
        )
        self.requires_grad_(False).eval()

    def image_embeddings(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings ``[N, P]`` of images in [-1, 1]."""
        dtype = self.visual_projection.weight.dtype
        pixels = self.preprocess(images).to(dtype)  # [N, 3, c, c]
        pooled = self.vision_model(pixel_values=pixels).pooler_output  # [N, D]
        emb = self.visual_projection(pooled)  # [N, P]
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Aesthetic scores ``[N]`` of images ``[N, 3, H, W]`` in [-1, 1]."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
        return self.head(self.image_embeddings(images))
