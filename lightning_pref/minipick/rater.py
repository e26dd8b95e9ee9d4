"""MiniPick's hidden "human": a pixel-based gold reward and Bradley-Terry pair labels.

:class:`GoldRater` judges arbitrary ``[N, 3, S, S]`` images in ``[-1, 1]`` (renders or samples of an
imperfect model) against template captions. It measures everything from pixels, starting from a
soft mask of pixels close to the named palette colour:

==========  ======  ===========================================================================
component   weight  measures (each in ``[0, 1]``)
==========  ======  ===========================================================================
color       0.20    object found: min(1, mask area / half the expected area) * min(1, fit / 0.5)
position    0.20    Gaussian of the mask centroid's distance to the named anchor (sigma 0.08)
size        0.15    Gaussian of log(mask area / expected area of the named shape and size)
shape       0.20    sigmoid of IoU with the named shape's template minus the best other IoU
border      0.05    not cut off: exp(-mask share on edge pixels more than half covered / 0.05)
tone        0.15    aesthetic: background darkness, ``(1 - mean background level) / 2``
clean       0.05    aesthetic: background uniformity, ``exp(-background std / 0.08)``
==========  ======  ===========================================================================

Here ``fit`` is the best IoU of the mask with any shape's template, so scattered specks of the
colour do not count as an object. Position, size, shape and border are multiplied by ``color``
(nothing to judge without an object); tone and clean by the share of background seen, up to half
the image. Fidelity weighs 0.80 and taste (the aesthetics) 0.20: prompt fidelity is what users
care about most. MiniPick v1 weighed them 0.60/0.40; with a base model that drew (v2), its pairs
and every method's win rate then mostly measured the background (DPO: taste win rate 1.00,
fidelity 0.58). With 0.80/0.20 and the 1000-step base, DPO's fidelity win rate is 0.65 (seed 0)
while taste still wins every time.

The aesthetic taste, a dark and clean background, is never stated in a caption, and the world's
renders vary on it (background tone and texture are nuisances), so a tiny base model already
produces both liked and disliked backgrounds and preference tuning has something within reach to
select. A rater that only scores closeness to an ideal rendering gave DPO little to learn (win rate
0.51, against 0.69 once it also preferred a background tone).

:func:`label_pairs` turns scores into Pick-a-Pic style labels. Defaults were calibrated with
:func:`calibration_diffs` (4096 pairs of :func:`~lightning_pref.minipick.world.imperfect_render`
samples of the same train prompt, 16 px, seed 0): ``DEFAULT_TIE_MARGIN`` is the 12 % quantile of
``|s0 - s1|`` (Pick-a-Pic's tie rate) and ``DEFAULT_TEMPERATURE`` makes a pair at the median
``|s0 - s1|`` agree with the score order 80 % of the time. Both were calibrated with the v1 weights
(0.60/0.40) and not again since; the pair builder sets the tie margin afresh from the pairs it
labels (``AssetSettings.tie_rate``), so only the temperature carries the old calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_pref.minipick.world import (
    AREA_FACTORS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    caption,
    imperfect_render,
    parse_caption,
    sample_scenes,
    shape_coverage,
)

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TIE_MARGIN",
    "FIDELITY",
    "TASTE",
    "GoldRater",
    "RaterWeights",
    "calibration_diffs",
    "label_pairs",
    "temperature_for_agreement",
    "tie_margin_for_rate",
]

# calibration_diffs(4096, seed=0) at 16 px: |s0 - s1| has quantiles 0.009 (5 %), 0.021 (12 %),
# 0.047 (25 %), 0.101 (50 %), 0.195 (75 %), 0.546 (95 %). Seeds 1..3 give 11.4-12.7 % ties at 0.021.
DEFAULT_TIE_MARGIN = 0.021
# temperature_for_agreement(calibration_diffs(4096, seed=0), 0.8) = 0.0732.
DEFAULT_TEMPERATURE = 0.073


# The two groups of components: what the caption asks for, and the unstated taste.
FIDELITY = ("color", "position", "size", "shape", "border")
TASTE = ("tone", "clean")


@dataclass(frozen=True)
class RaterWeights:
    """Weights of the score components; they sum to 1, so scores lie in ``[0, 1]``."""

    color: float = 0.20
    position: float = 0.20
    size: float = 0.15
    shape: float = 0.20
    border: float = 0.05
    tone: float = 0.15
    clean: float = 0.05


@dataclass(frozen=True)
class _Targets:
    """What the captions ask for, as tensors."""

    color: Tensor  # [N, 3] palette colour
    anchor: Tensor  # [N, 2] named centroid (x, y)
    area: Tensor  # [N] expected area fraction at nominal scale
    shape_idx: Tensor  # [N] index into SHAPES


def _targets(captions: list[str], device: torch.device) -> _Targets:
    specs = [parse_caption(c) for c in captions]
    n = len(specs)
    return _Targets(
        color=torch.tensor([COLORS[s.color] for s in specs], device=device).reshape(n, 3),
        anchor=torch.tensor([POSITIONS[s.position] for s in specs], device=device).reshape(n, 2),
        area=torch.tensor(
            [AREA_FACTORS[s.shape] * SIZES[s.size] ** 2 for s in specs], device=device
        ),
        shape_idx=torch.tensor([SHAPES.index(s.shape) for s in specs], device=device),
    )


@dataclass(frozen=True)
class GoldRater:
    """Deterministic, vectorised gold reward for MiniPick images (see the module docstring).

    Attributes:
        weights: component weights.
        color_radius: RGB distance (in ``[-1, 1]`` units) at which a pixel is half in the mask;
            half the distance between the two closest palette colours (orange, yellow: 0.71).
        color_softness: width of the mask's sigmoid edge.
        near_radius: looser RGB distance marking pixels whose neighbours may be unmixed.
        position_sigma: tolerance of the centroid, in image sides (anchors are >= 0.2 apart).
        size_sigma: tolerance of log-area (small and large differ by 0.90 in log-area).
        shape_temperature: IoU margin that moves the shape term from 0.5 to 0.73.
        border_scale: share of mask mass past the image edge that costs a factor ``e``.
        clean_scale: background std that costs the clean term a factor ``e``.
    """

    weights: RaterWeights = field(default_factory=RaterWeights)
    color_radius: float = 0.35
    color_softness: float = 0.07
    near_radius: float = 0.7
    position_sigma: float = 0.08
    size_sigma: float = 0.35
    shape_temperature: float = 0.04
    border_scale: float = 0.05
    clean_scale: float = 0.08

    def score(self, images: Tensor, captions: list[str]) -> Tensor:
        """Scalar reward in ``[0, 1]``: the weighted sum of :meth:`score_components`.

        Args:
            images: ``[N, 3, S, S]`` in ``[-1, 1]`` (values outside are clamped).
            captions: ``N`` template captions.

        Returns:
            ``[N]`` scores.
        """
        parts = self.score_components(images, captions)
        total = torch.zeros_like(parts["color"])  # [N]
        for f in fields(self.weights):
            total = total + getattr(self.weights, f.name) * parts[f.name]
        return total

    def score_groups(self, components: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prompt fidelity and taste, each ``[N]`` in ``[0, 1]``, from :meth:`score_components`.

        Each group is its components' weighted mean (weights renormalised within the group), so
        ``score = w_F · fidelity + w_T · taste`` with ``w_F`` the fidelity weights' sum (0.80 by
        default) and ``w_T`` the taste weights' sum (0.20).
        """
        groups = {}
        for group, names in (("fidelity", FIDELITY), ("taste", TASTE)):
            total = sum(getattr(self.weights, n) for n in names)
            groups[group] = sum(getattr(self.weights, n) * components[n] for n in names) / total
        return groups

    def score_components(self, images: Tensor, captions: list[str]) -> dict[str, Tensor]:
        """Every score component, each ``[N]`` in ``[0, 1]``, keyed as in :class:`RaterWeights`.

        Raises:
            ValueError: if shapes disagree or a caption is not a template caption.
        """
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or len(captions) != shape[0]:
            raise ValueError(
                f"expected [N, 3, S, S] images and N captions, got {shape} and "
                f"{len(captions)} captions"
            )
        x = images.detach().float().clamp(-1.0, 1.0)  # [N, 3, S, S]
        target = _targets(captions, x.device)
        mask = self._object_mask(x, target.color)  # [N, S, S]
        area = mask.mean(dim=(1, 2))  # [N] fraction of the image
        centroid = _centroid(mask)  # [N, 2]
        shape, best_fit = self._shape_term(mask, centroid, area, target.shape_idx)  # [N], [N]
        # An object is enough of the colour, gathered in a blob that some template fits (IoU of
        # at least 0.5); scattered specks of the colour (noise) are not one.
        found = (area / (0.5 * target.area)).clamp(max=1.0) * (best_fit / 0.5).clamp(max=1.0)
        offset = (centroid - target.anchor).norm(dim=1)  # [N]
        position = torch.exp(-0.5 * (offset / self.position_sigma) ** 2)
        log_ratio = torch.log(area.clamp_min(1e-6) / target.area)  # [N]
        size = torch.exp(-0.5 * (log_ratio / self.size_sigma) ** 2)
        border = self._border_term(mask)
        tone, clean = self._background_terms(x, mask)
        return {
            "color": found,
            "position": found * position,
            "size": found * size,
            "shape": found * shape,
            "border": found * border,
            "tone": tone,
            "clean": clean,
        }

    def _border_term(self, mask: Tensor) -> Tensor:
        """``exp(-share of mask mass on edge pixels more than half covered / border_scale)``."""
        ring = torch.ones_like(mask[0])  # [S, S]
        ring[1:-1, 1:-1] = 0.0
        # An edge pixel more than half covered means the object goes on past the image.
        past_edge = (2.0 * mask - 1.0).clamp_min(0.0) * ring  # [N, S, S]
        on_border = past_edge.sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1e-6)  # [N]
        return torch.exp(-on_border / self.border_scale)

    def _object_mask(self, x: Tensor, color: Tensor) -> Tensor:
        """Soft coverage of the named colour; partly covered pixels are unmixed from the background.

        Core pixels lie within ``color_radius`` of the palette colour. A pixel within one pixel of
        a loosely matching one (``near_radius``: blurred or anti-aliased object pixels) that lies on
        the segment from the background colour (per-channel median: the object covers under a
        fifth of the image) to the palette colour counts with its mixing fraction, so edge pixels
        and blurred objects keep their area while background texture two pixels away does not.
        """
        target = color[:, :, None, None]  # [N, 3, 1, 1]
        dist = _channel_norm(x - target)  # [N, S, S]
        core = torch.sigmoid((self.color_radius - dist) / self.color_softness)  # [N, S, S]
        background = x.flatten(2).median(dim=2).values[:, :, None, None]  # [N, 3, 1, 1]
        axis = target - background  # [N, 3, 1, 1]
        alpha = ((x - background) * axis).sum(dim=1) / axis.square().sum(dim=1).clamp_min(1e-3)
        alpha = alpha.clamp(0.0, 1.0)  # [N, S, S]
        residual = _channel_norm(x - background - alpha[:, None] * axis)  # [N, S, S]
        on_segment = torch.sigmoid((self.color_radius - residual) / self.color_softness)
        loose = torch.sigmoid((self.near_radius - dist) / self.color_softness)  # [N, S, S]
        near = F.max_pool2d(loose[:, None], 3, stride=1, padding=1)[:, 0]  # [N, S, S]
        return torch.maximum(core, alpha * on_segment * near)

    def _shape_term(
        self, mask: Tensor, centroid: Tensor, area: Tensor, shape_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Shape score and best template fit, each ``[N]``.

        Each shape's template is placed at the mask centroid with the mask's area, so only the
        outline is judged, not position or size; a template blurred like ``imperfect_render``'s
        blur is tried too, so soft edges do not pass for another shape. The score is the sigmoid
        of (IoU with the named shape) - (best IoU with another shape); the fit is the best IoU.
        """
        n, size = mask.shape[0], mask.shape[-1]
        supersample = 2 if size < 24 else 1  # analytic coverage alone is fine at larger sizes
        ious = []
        for k, shape in enumerate(SHAPES):
            radius = torch.sqrt(area.clamp_min(1e-6) / AREA_FACTORS[shape])  # [N]
            idx = torch.full((n,), k, dtype=torch.long, device=mask.device)
            sharp = shape_coverage(idx, centroid, radius, size, supersample)  # [N, S, S]
            for template in (sharp, _blur(sharp)):
                inter = torch.minimum(mask, template).sum(dim=(1, 2))
                union = torch.maximum(mask, template).sum(dim=(1, 2)).clamp_min(1e-6)
                ious.append(inter / union)
        iou = torch.stack(ious, dim=1).unflatten(1, (len(SHAPES), 2)).amax(dim=2)  # [N, K]
        named = iou.gather(1, shape_idx[:, None])[:, 0]  # [N]
        others = iou.scatter(1, shape_idx[:, None], -1.0).amax(dim=1)  # [N]
        return torch.sigmoid((named - others) / self.shape_temperature), iou.amax(dim=1)

    def _background_terms(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Darkness and uniformity of the background (pixels away from the colour mask)."""
        # Any trace of the object (a quarter-covered edge pixel counts fully) and its neighbours.
        trace = (4.0 * mask[:, None]).clamp(max=1.0)  # [N, 1, S, S]
        near_object = F.max_pool2d(trace, 3, stride=1, padding=1)[:, 0]  # [N, S, S]
        weight = (1.0 - near_object)[:, None]  # [N, 1, S, S]
        total = weight.sum(dim=(1, 2, 3)).clamp_min(1e-6)  # [N]
        mean = (weight * x).sum(dim=(2, 3)) / total[:, None]  # [N, 3]
        var = (weight * (x - mean[:, :, None, None]) ** 2).sum(dim=(2, 3)) / total[:, None]
        seen = (total / (0.5 * x.shape[-1] * x.shape[-2])).clamp(max=1.0)  # [N]
        tone = (1.0 - mean.mean(dim=1)).clamp(0.0, 2.0) / 2.0  # [N]
        clean = torch.exp(-var.mean(dim=1).sqrt() / self.clean_scale)  # [N]
        return seen * tone, seen * clean


def _blur(mask: Tensor) -> Tensor:
    """``[N, S, S]`` masks blurred by the ``[1, 2, 1] x [1, 2, 1] / 16`` kernel (zero padding)."""
    padded = F.pad(mask, (1, 1, 1, 1))  # [N, S + 2, S + 2]
    rows = padded[:, :, :-2] + 2.0 * padded[:, :, 1:-1] + padded[:, :, 2:]  # [N, S + 2, S]
    return (rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]) / 16.0


def _channel_norm(x: Tensor) -> Tensor:
    """Euclidean norm over the channels of ``[N, 3, S, S]`` (faster than ``norm(dim=1)`` on CPU)."""
    return (x[:, 0].square() + x[:, 1].square() + x[:, 2].square()).sqrt()


def _centroid(mask: Tensor) -> Tensor:
    """Mass centroid ``(x, y)`` of ``[N, S, S]`` masks, normalised (the centre if empty)."""
    size = mask.shape[-1]
    grid = (torch.arange(size, dtype=mask.dtype, device=mask.device) + 0.5) / size  # [S]
    mass = mask.sum(dim=(1, 2)) + 1e-6  # [N]
    cx = ((mask.sum(dim=1) * grid).sum(dim=1) + 0.5e-6) / mass  # [N]
    cy = ((mask.sum(dim=2) * grid).sum(dim=1) + 0.5e-6) / mass  # [N]
    return torch.stack([cx, cy], dim=1)


def label_pairs(
    scores_0: Tensor,
    scores_1: Tensor,
    generator: torch.Generator,
    temperature: float = DEFAULT_TEMPERATURE,
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> tuple[Tensor, Tensor]:
    """Noisy Bradley-Terry labels in Pick-a-Pic's format.

    ``P(0 > 1) = sigmoid((s0 - s1) / temperature)`` is sampled once per pair; pairs with
    ``|s0 - s1| < tie_margin`` become ties ``(0.5, 0.5)``.

    Args:
        scores_0: ``[B]`` rater scores of the first images.
        scores_1: ``[B]`` rater scores of the second images.
        generator: generator for the Bernoulli draws (on any device).
        temperature: Bradley-Terry temperature (``> 0``).
        tie_margin: score gap below which a pair is a tie.

    Returns:
        ``(label_0, label_1)``, each ``[B]`` float on the scores' device, summing to 1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    diff = (scores_0 - scores_1).float()  # [B]
    p_0 = torch.sigmoid(diff / temperature)  # [B]
    u = torch.rand(diff.shape, generator=generator, device=generator.device)  # [B]
    u = u.to(diff.device)
    label_0 = (u < p_0).float()  # [B]
    label_0 = torch.where(diff.abs() < tie_margin, torch.full_like(label_0, 0.5), label_0)
    return label_0, 1.0 - label_0


def tie_margin_for_rate(score_diffs: Tensor, rate: float) -> float:
    """Tie margin under which a fraction ``rate`` of the observed ``|s0 - s1|`` falls.

    Raises:
        ValueError: if ``rate`` is outside ``[0, 1)`` or there are no differences.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if score_diffs.numel() == 0:
        raise ValueError("need at least one score difference")
    if rate == 0.0:
        return 0.0
    return float(torch.quantile(score_diffs.detach().abs().flatten().float().cpu(), rate))


def calibration_diffs(
    num_pairs: int = 4096, seed: int = 0, size: int = 16, rater: GoldRater | None = None
) -> Tensor:
    """``s0 - s1`` for two imperfect samples of each of ``num_pairs`` train prompts.

    Stand-in for pairs from a generator before one is trained: each sample gets its own random
    nuisances and :class:`~lightning_pref.minipick.world.Imperfection` errors.

    Returns:
        ``[num_pairs]`` score differences.
    """
    rater = rater or GoldRater()
    specs = [s.spec for s in sample_scenes(num_pairs, seed)]
    captions = [caption(s) for s in specs]
    score_0 = rater.score(imperfect_render(specs, 2 * seed + 1, size), captions)  # [P]
    score_1 = rater.score(imperfect_render(specs, 2 * seed + 2, size), captions)  # [P]
    return score_0 - score_1


def temperature_for_agreement(score_diffs: Tensor, agreement: float = 0.8) -> float:
    """Temperature at which a pair at the median ``|s0 - s1|`` follows the score order."""
    median = float(score_diffs.abs().median())
    return median / math.log(agreement / (1.0 - agreement))
