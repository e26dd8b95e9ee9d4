"""``seed: null`` means the run's seed: the one ``--seed_everything`` set."""

from __future__ import annotations

import os

__all__ = ["resolve_seed"]


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or when None the run's global seed, or 0 when no seed was set.

    ``seed_everything`` (which LightningCLI calls with ``--seed_everything`` before it builds the
    model and data) records the global seed in ``PL_GLOBAL_SEED``; modules and data modules whose
    ``seed`` is left at None follow it, so a seed sweep changes every random stream of a run.
    """
    if seed is not None:
        return seed
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else 0
