"""Scorers built from a folder or hub id, so that YAML can pick them by ``class_path``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_pref.scoring.base import Scorer
from lightning_pref.scoring.pickscore import PickScore
from lightning_pref.scoring.step_aware import StepAwarePickScore

__all__ = ["PretrainedPickScore", "PretrainedStepAwarePickScore"]

PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
SPO_SPM = "SPO-Diffusion-Models/Step-Aware_Preference_Models"


class PretrainedPickScore(Scorer):
    """PickScore loaded from ``pretrained`` (timesteps ignored), frozen.

    Args:
        pretrained: folder or hub id of the CLIP weights (PickScore_v1 by default).
        processor_path: folder or hub id of the tokenizer and preprocessor; None = ``pretrained``.
        logit_scale: multiply by ``exp(logit_scale)`` (100 for PickScore_v1). False returns the
            raw cosine, which SmPO's label-smoothing constants (``ScoreLabels``) are for.
    """

    def __init__(
        self,
        pretrained: str = PICKSCORE,
        processor_path: str | None = PICKSCORE_PROCESSOR,
        logit_scale: bool = True,
    ) -> None:
        super().__init__()
        self.model = PickScore.from_pretrained(pretrained, processor_path, logit_scale=logit_scale)
        self.model.requires_grad_(False).eval()

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """PickScore ``[N]`` of images in [-1, 1]."""
        return self.model(images, captions, timesteps)


class PretrainedStepAwarePickScore(Scorer):
    """SPO's step-aware preference model (SPM, METHODS §2.2) loaded from ``pretrained``, frozen.

    The SPO release (``SPO-Diffusion-Models/Step-Aware_Preference_Models``) stores the SPM in its
    own training code's layout; convert it once with
    :func:`~lightning_pref.scoring.split_spo_state_dict` and
    :meth:`~lightning_pref.scoring.StepAwarePickScore.save_pretrained`, then point ``pretrained``
    at that folder (the key mapping is written from SPO's model code and not verified against the
    released files here).

    Args:
        pretrained: folder (or hub id) written by ``StepAwarePickScore.save_pretrained``.
        processor_path: folder or hub id of the tokenizer and preprocessor; None = ``pretrained``.
    """

    def __init__(self, pretrained: str = SPO_SPM, processor_path: str | None = None) -> None:
        super().__init__()
        self.model = StepAwarePickScore.from_pretrained(pretrained, processor_path)
        self.model.requires_grad_(False).eval()

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Step-aware score ``[N]`` of x̂0 images in [-1, 1] at ``timesteps``."""
        return self.model(images, captions, timesteps)
