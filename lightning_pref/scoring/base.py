"""One interface for every reward, preference or step-aware scorer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

__all__ = ["Scorer"]


class Scorer(nn.Module, ABC):
    """Scores images against captions: higher is better.

    Subclasses that are not step-aware ignore ``timesteps``. Scorers are frozen: they are used
    under ``torch.no_grad`` except where a method needs the reward's gradient (TailorPO-G).

    A scorer whose score is made of named parts (MiniPick's gold rater: fidelity and taste, and
    their components) lists them in ``part_names`` and returns them from :meth:`parts`;
    ``evaluate`` then reports each part as a score of its own, named ``<scorer>.<part>``.
    """

    part_names: ClassVar[tuple[str, ...]] = ()  # what :meth:`parts` returns, in report order

    @abstractmethod
    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Return ``[N]`` scores for images ``[N, 3, H, W]`` in [-1, 1] and N captions."""

    def parts(self, images: Tensor, captions: Sequence[str]) -> dict[str, Tensor]:
        """The score's named parts, each ``[N]``, keyed by ``part_names``; none by default."""
        return {}
