"""Base classes for preference objectives: one class per method, picked in YAML by class_path."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from torch import nn

from lightning_pref.models.noising import ForwardNoising, NoisingStrategy
from lightning_pref.types import DenoiseLabeled, DenoisePair, ObjectiveOutput, StepPair

__all__ = ["PairObjective", "PreferenceObjective", "StepObjective", "UnpairedObjective"]

PairT = TypeVar("PairT", DenoisePair, StepPair, DenoiseLabeled)


class PreferenceObjective(nn.Module, ABC, Generic[PairT]):
    """Maps model outputs for a preference pair to a loss. Holds no models.

    Attributes:
        requires_reference: if False, the module skips the frozen reference pass and passes
            ``None`` for the reference fields.
    """

    requires_reference: ClassVar[bool] = True

    @abstractmethod
    def forward(self, pair: PairT) -> ObjectiveOutput:
        """Return the scalar loss and detached scalar metrics for a batch of pairs."""


class PairObjective(PreferenceObjective[DenoisePair], ABC):
    """Objective over denoiser outputs of a noised (winner, loser) pair: the offline family.

    Attributes:
        uses_loser: if False (SFT), the module runs the denoiser on the winner only and passes the
            winner's tensors in the ``_l`` fields too.
    """

    uses_loser: ClassVar[bool] = True

    def default_noising(self) -> NoisingStrategy:
        """How the method's official code noises x0 (forward noising unless overridden).

        The module's ``noising`` argument, when given, replaces it.
        """
        return ForwardNoising()


class UnpairedObjective(PreferenceObjective[DenoiseLabeled], ABC):
    """Objective over denoiser outputs of single images with per-image labels (Diffusion-KTO)."""

    def default_noising(self) -> NoisingStrategy:
        """Forward noising; the module's ``noising`` argument replaces it."""
        return ForwardNoising()


class StepObjective(PreferenceObjective[StepPair], ABC):
    """Objective over transition log-probabilities of a step pair: the on-policy family."""
