"""MiniPickAesthetic: a caption-blind "aesthetic" score from classic image statistics.

CaPO (METHODS §11.4) selects pairs from several reward models that disagree. On MiniPick the
proxy :class:`~lightning_pref.minipick.proxy.MiniPickScore` judges an image against its caption;
this scorer judges the image alone, from three textbook photo-aesthetics features of images
``u = (x + 1) / 2`` in [0, 1]:

- **colourfulness** (Hasler & Süsstrunk 2003): with ``rg = R - G`` and ``yb = (R + G)/2 - B``
  over the pixels, ``sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²)`` (population std);
- **contrast**: RMS contrast, the std of the luma ``Y = 0.299 R + 0.587 G + 0.114 B``;
- **centredness** (the subject near the middle): each pixel's salience is its RGB distance to
  the image's per-channel median colour (the background, for a small object); the
  salience-weighted centroid ``c`` of the pixel centres in ``[-1, 1]²`` gives ``1 - |c|/√2``
  (1 for a centred subject or a flat image, 0 at a corner).

``score = scale · (w_colour·colourfulness + w_contrast·contrast + w_centre·centredness)``.

It is **not** the hidden gold rater and shares none of its code or targets: it never reads the
caption (so it cannot know the asked-for colour, shape or position) and has no notion of the
rater's background taste. It disagrees with the proxy by design: it rewards a centred object
even when the caption asks for "on the left", and vivid colour whatever colour was asked for.
``scale`` plays the role of CLIP's logit scale: CaPO calibrates raw scores with
``sigmoid(R_i - R_k)``, so it sets how sharply a score difference becomes a win probability
(10 puts a typical within-prompt spread on the proxy's, see ``capo_data``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_pref.scoring.base import Scorer

__all__ = ["MiniPickAesthetic", "centredness", "colourfulness", "rms_contrast"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def colourfulness(images: Tensor) -> Tensor:
    """Hasler-Süsstrunk colourfulness ``[N]`` of ``[N, 3, H, W]`` images in [0, 1]."""
    r, g, b = images.double().unbind(dim=1)  # [N, H, W] each
    rg = (r - g).flatten(1)  # [N, HW]
    yb = (0.5 * (r + g) - b).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)).sqrt()
    offset = (rg.mean(dim=1).pow(2) + yb.mean(dim=1).pow(2)).sqrt()
    return (spread + 0.3 * offset).to(images.dtype)


def rms_contrast(images: Tensor) -> Tensor:
    """Std of the BT.601 luma ``[N]`` of ``[N, 3, H, W]`` images in [0, 1]."""
    weights = torch.tensor(LUMA, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    luma = (images.double() * weights).sum(dim=1).flatten(1)  # [N, HW]
    return luma.std(dim=1, unbiased=False).to(images.dtype)


def centredness(images: Tensor) -> Tensor:
    """``1 - |salience centroid| / √2`` ``[N]`` of ``[N, 3, H, W]`` images in [0, 1].

    Salience is the RGB distance to the per-channel median colour (``torch.median``: the lower
    of the two middle values for an even pixel count). A flat image (no salience) scores 1.
    """
    x = images.double()
    n, _, h, w = x.shape
    median = x.flatten(2).median(dim=2).values.view(n, 3, 1, 1)  # [N, 3, 1, 1]
    salience = (x - median).pow(2).sum(dim=1).sqrt()  # [N, H, W]
    ys = (2 * torch.arange(h, dtype=torch.float64, device=x.device) + 1) / h - 1  # [H]
    xs = (2 * torch.arange(w, dtype=torch.float64, device=x.device) + 1) / w - 1  # [W]
    total = salience.sum(dim=(1, 2)).clamp_min(1e-12)  # [N]
    cy = (salience.sum(dim=2) * ys).sum(dim=1) / total  # [N]
    cx = (salience.sum(dim=1) * xs).sum(dim=1) / total
    return (1 - (cx.pow(2) + cy.pow(2)).sqrt() / math.sqrt(2)).to(images.dtype)


class MiniPickAesthetic(Scorer):
    """Caption-blind aesthetic score of MiniPick images (see the module docstring).

    Args:
        colour_weight: weight of colourfulness.
        contrast_weight: weight of RMS contrast.
        centre_weight: weight of centredness.
        scale: multiplies the weighted sum (a logit scale for CaPO's calibration).
    """

    def __init__(
        self,
        colour_weight: float = 1.0,
        contrast_weight: float = 1.0,
        centre_weight: float = 1.0,
        scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.colour_weight, self.contrast_weight = colour_weight, contrast_weight
        self.centre_weight, self.scale = centre_weight, scale

    def components(self, images: Tensor) -> dict[str, Tensor]:
        """The three features ``[N]`` of ``[N, 3, H, W]`` images in [-1, 1]."""
        u = ((images.float() + 1) / 2).clamp(0, 1)  # [N, 3, H, W]
        return {
            "colourfulness": colourfulness(u),
            "contrast": rms_contrast(u),
            "centredness": centredness(u),
        }

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Return ``[N]`` scores for images ``[N, 3, H, W]`` in [-1, 1]; captions are unused.

        Raises:
            ValueError: if the number of captions differs from the number of images.
        """
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        parts = self.components(images)
        total = (
            self.colour_weight * parts["colourfulness"]
            + self.contrast_weight * parts["contrast"]
            + self.centre_weight * parts["centredness"]
        )
        return self.scale * total
