"""Tensor contracts between DataModules, LightningModules and objectives.

Shapes use ``B`` for pairs, ``C, h, w`` for latent channels and size, ``L`` for text tokens
and ``D`` for the text-embedding width. Batch dataclasses are not frozen because Lightning's
device transfer rebuilds them field by field; objective inputs are frozen because nothing should
edit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = [
    "DenoiseLabeled",
    "DenoisePair",
    "DenoiseToTarget",
    "ImageLabelBatch",
    "ImagePairBatch",
    "LatentPairBatch",
    "NoisePairBatch",
    "ObjectiveOutput",
    "PairBatch",
    "PromptBatch",
    "StepPair",
    "StepPoolBatch",
]


@dataclass
class ImagePairBatch:
    """A batch of preference pairs as decoded images and captions (what the data side reads).

    The winner is always ``_w``: the DataModule maps Pick-a-Pic's ``jpg_0/label_0`` once.
    """

    pixels_w: Tensor  # [B, 3, H, W] preferred image in [-1, 1]
    pixels_l: Tensor  # [B, 3, H, W] rejected image in [-1, 1]
    captions: list[str]  # B captions; "" where empty-prompt dropout fired
    pref_prob: Tensor  # [B] P(w ≻ l); 1.0 for hard labels
    num_skipped: int = 0  # corrupt rows dropped while building this batch
    raw_captions: list[str] | None = None  # B captions before dropout (AI-feedback relabelling)


@dataclass
class LatentPairBatch:
    """Preference pairs read from a latent cache (``python -m lightning_pref cache-latents``).

    The VAE posterior is kept as its mean and standard deviation, unscaled, so the module draws a
    fresh latent every step exactly as encoding on the fly would (METHODS §1.1: sampled, not the
    mean). A pixel-space model caches its pixels as ``mean_*`` and has no ``std_*``.
    """

    mean_w: Tensor  # [B, C, h, w] posterior mean of the preferred image (or its pixels)
    mean_l: Tensor  # [B, C, h, w]
    std_w: Tensor | None  # [B, C, h, w] posterior std; None for a pixel-space model
    std_l: Tensor | None  # [B, C, h, w]
    prompt_embeds: Tensor  # [B, L, D] frozen text-encoder output; the "" embedding on dropout
    pref_prob: Tensor  # [B] P(w ≻ l); 1.0 for hard labels
    num_skipped: int = 0  # rows dropped while the cache was read


@dataclass
class ImageLabelBatch:
    """Single images with per-image binary labels (unpaired feedback, Diffusion-KTO)."""

    pixels: Tensor  # [N, 3, H, W] in [-1, 1]
    captions: list[str]  # N captions
    labels: Tensor  # [N] +1 desirable, -1 undesirable
    num_skipped: int = 0  # corrupt rows dropped while building this batch


@dataclass
class NoisePairBatch:
    """Noise-tracked pairs (PNAPO): generated latents with the prior noise each started from."""

    latents_w: Tensor  # [B, C, h, w] the preferred image's latents, as generated
    latents_l: Tensor  # [B, C, h, w]
    noise_w: Tensor  # [B, C, h, w] the x_T (σ = 1) the winner was sampled from
    noise_l: Tensor  # [B, C, h, w]
    captions: list[str]  # B captions; "" where empty-prompt dropout fired
    pref_prob: Tensor  # [B] σ(reward gap) of the pair
    num_skipped: int = 0


@dataclass
class PairBatch:
    """A batch of preference pairs in latent space, ready for the denoiser.

    ``noise_w``/``noise_l``: each image's own prior noise (noise-tracked pairs), used instead of
    a fresh draw; None: the module draws the noise.
    """

    latents_w: Tensor  # [B, C, h, w] preferred image
    latents_l: Tensor  # [B, C, h, w]
    prompt_embeds: Tensor  # [B, L, D]
    pref_prob: Tensor  # [B] P(w ≻ l); 1.0 for hard labels
    noise_w: Tensor | None = None  # [B, C, h, w]
    noise_l: Tensor | None = None  # [B, C, h, w]


@dataclass(frozen=True)
class DenoisePair:
    """Denoiser outputs for one noised preference pair (offline family: DPO, SmPO, InPO, ...)."""

    pred_w: Tensor  # [B, C, h, w] policy output
    pred_l: Tensor  # [B, C, h, w]
    target_w: Tensor  # [B, C, h, w] eps or v target
    target_l: Tensor  # [B, C, h, w]
    ref_pred_w: Tensor | None  # [B, C, h, w]; None iff the objective is reference-free
    ref_pred_l: Tensor | None
    timesteps: Tensor  # [B]
    pref_prob: Tensor  # [B]


@dataclass(frozen=True)
class DenoiseLabeled:
    """Denoiser outputs for noised single images with per-image labels (Diffusion-KTO)."""

    pred: Tensor  # [N, C, h, w] policy output
    target: Tensor  # [N, C, h, w] eps or v target
    ref_pred: Tensor | None  # [N, C, h, w]; None iff the objective is reference-free
    labels: Tensor  # [N] +1 desirable, -1 undesirable
    timesteps: Tensor  # [N]


@dataclass(frozen=True)
class DenoiseToTarget:
    """The student's output on a renoised state and the x̂0 it is pulled to (Self-NPO)."""

    pred: Tensor  # [N, C, h, w] student output (eps or v) at (x_s, s, c)
    x_t: Tensor  # [N, C, h, w] the state the student saw, x_s
    alphas_cumprod: Tensor  # [N, 1, 1, 1] ā_s
    prediction_type: str  # "epsilon" or "v_prediction"
    target_x0: Tensor  # [N, C, h, w] the teacher's x̂0, detached
    timesteps: Tensor  # [N] s


@dataclass
class PromptBatch:
    """Prompts for on-policy generation (the on-policy family's data side yields these)."""

    captions: list[str]  # P prompts


@dataclass
class StepPoolBatch:
    """Step pairs from an on-policy pool: two transitions x_t → x_{t-1} from one shared x_t.

    ``B`` here counts step pairs. The winner ``x_w`` is the candidate the step scorer ranked higher.
    """

    x_t: Tensor  # [B, C, h, w] shared noisy state
    x_w: Tensor  # [B, C, h, w] preferred x_{t-1}
    x_l: Tensor  # [B, C, h, w] rejected x_{t-1}
    timesteps: Tensor  # [B] t
    prev_timesteps: Tensor  # [B] t - T/num_steps (negative on the last step: ā = ā_0)
    captions: list[str]  # B captions


@dataclass(frozen=True)
class StepPair:
    """Transition log-probabilities for one step pair (on-policy family: SPO, TailorPO, D3PO)."""

    logp_w: Tensor  # [B] log p(x_{t-1} | x_t, c), mean over C, h, w
    logp_l: Tensor  # [B]
    ref_logp_w: Tensor  # [B]
    ref_logp_l: Tensor  # [B]
    timesteps: Tensor  # [B]


@dataclass
class ObjectiveOutput:
    """A scalar loss plus detached scalar metrics, logged as ``{stage}/{key}``."""

    loss: Tensor  # scalar
    metrics: dict[str, Tensor] = field(default_factory=dict)
