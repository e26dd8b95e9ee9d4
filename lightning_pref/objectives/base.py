"""Base classes for preference objectives: one class per method, picked in YAML by class_path."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

from torch import Tensor, nn

from lightning_pref.models.noising import ForwardNoising, NoisingStrategy
from lightning_pref.types import (
    DenoiseLabeled,
    DenoisePair,
    DenoiseToTarget,
    ObjectiveOutput,
    StepPair,
)

__all__ = [
    "PairObjective",
    "PreferenceObjective",
    "StepObjective",
    "TargetObjective",
    "UnpairedObjective",
]

PairT = TypeVar("PairT", DenoisePair, StepPair, DenoiseLabeled, DenoiseToTarget)


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
    """Objective over denoiser outputs of single images with per-image labels (Diffusion-KTO).

    An objective whose statistic spans every rank's batch (KTO's reference point) sums over ranks
    with :meth:`sum_over_ranks`; the module that runs it installs its own (``all_gather``-based)
    with :meth:`set_sum_over_ranks`, so the objective never calls ``torch.distributed``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sum_over_ranks: Callable[[Tensor], Tensor] | None = None

    def set_sum_over_ranks(self, fn: Callable[[Tensor], Tensor] | None) -> None:
        """Install the module's sum over ranks (None: this process only)."""
        self._sum_over_ranks = fn

    def sum_over_ranks(self, values: Tensor) -> Tensor:
        """``values`` summed elementwise over every rank (as they are on one process)."""
        return values if self._sum_over_ranks is None else self._sum_over_ranks(values)

    def default_noising(self) -> NoisingStrategy:
        """Forward noising; the module's ``noising`` argument replaces it."""
        return ForwardNoising()


class TargetObjective(PreferenceObjective[DenoiseToTarget], ABC):
    """Objective pulling the policy's x̂0 on a state to a target x̂0 (Self-NPO's distillation)."""

    requires_reference = False


class StepObjective(PreferenceObjective[StepPair], ABC):
    """Objective over transition log-probabilities of a step pair: the on-policy family."""
