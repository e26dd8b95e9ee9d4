"""MiniPick's scorers for ``evaluate``: the hidden gold rater and the learned proxy (MiniPickScore).

Real prompt sets are scored by the reward models in :mod:`lightning_pref.scoring` instead, named
with ``--scorers`` (see ``experiments/eval/``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.minipick import GoldRater
from lightning_pref.minipick.rater import FIDELITY, TASTE
from lightning_pref.minipick.world import parse_caption
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.scoring import Scorer

__all__ = ["GoldScorer", "ProxyScorer", "default_scorers"]


class GoldScorer(Scorer):
    """MiniPick's hidden gold rater as a :class:`Scorer` (captions must be MiniPick captions).

    Its parts are the two groups, ``fidelity`` (does the image show what the caption asks for)
    and ``taste`` (the unstated background preference), then every component of each
    (:class:`~lightning_pref.minipick.rater.GoldRater`); ``evaluate`` reports ``gold.fidelity``,
    ``gold.taste``, ``gold.color``, ... with means, medians and win rates.
    """

    part_names = ("fidelity", "taste", *FIDELITY, *TASTE)

    def __init__(self) -> None:
        super().__init__()
        self.rater = GoldRater()

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Gold reward ``[N]`` in [0, 1] of images ``[N, 3, H, W]`` in [-1, 1]."""
        return self.rater.score(images, list(captions))

    def parts(self, images: Tensor, captions: Sequence[str]) -> dict[str, Tensor]:
        """``{"fidelity", "taste", "color", ..., "clean"}``, each ``[N]`` in [0, 1]."""
        components = self.rater.score_components(images, list(captions))
        return {**self.rater.score_groups(components), **components}

    @staticmethod
    def check_captions(captions: Sequence[str]) -> None:
        """Raise ConfigError naming the first caption the rater cannot score."""
        for text in captions:
            try:
                parse_caption(text)
            except ValueError:
                raise ConfigError(
                    f"the gold rater scores MiniPick captions only (e.g. 'a large red circle on "
                    f"the left'), not {text!r}: fix --prompts or pass other --scorers/--gold"
                ) from None


class ProxyScorer(Scorer):
    """MiniPickScore, MiniPick's learned proxy reward (a PickScore stand-in), from the asset cache.

    Args:
        data_dir: the MiniPick asset cache; None = the default. Built on first use.
    """

    def __init__(self, data_dir: str | None = None) -> None:
        super().__init__()
        from lightning_pref.minipick.assets import MiniPickAssets
        from lightning_pref.minipick.proxy import MiniPickScore

        self.model = MiniPickScore.from_pretrained(MiniPickAssets(data_dir).proxy_dir(build=True))

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Proxy reward ``[N]`` (``exp(logit_scale) * cos``) of images in [-1, 1]."""
        return self.model(images, list(captions))


def default_scorers(policy: DiffusionPolicy) -> dict[str, Scorer]:
    """The gold rater, plus MiniPickScore when the policy is MiniPick's."""
    from lightning_pref.minipick.policy import MiniPickPolicy

    scorers: dict[str, Scorer] = {"gold": GoldScorer()}
    if isinstance(policy, MiniPickPolicy):
        scorers["proxy"] = ProxyScorer(str(policy.assets.root))
    return scorers
