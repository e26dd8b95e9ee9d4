"""``python -m lightning_pref score-pairs``: score both images of every pair, for ScoreLabels."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

from lightning_pref.data.scored import score_pairs
from lightning_pref.scoring.base import Scorer

__all__ = ["main"]


SCORE_PAIRS_HELP = """Score Pick-a-Pic pairs offline for SmPO's label smoothing (ScoreLabels).

Writes the shards of --input to --output with float columns score_0/score_1 and a scores.json.
SmPO's constants (ScoreLabels defaults) are for PickScore's RAW cosine: pass
--scorer lightning_pref.scoring.PretrainedPickScore --scorer.logit_scale false. For any other
scorer, train with score_labels: {score_min: null, score_max: null} (read from scores.json)."""


def main(argv: list[str]) -> dict[str, Any]:
    """``python -m lightning_pref score-pairs ...``: parse with jsonargparse, then score.

    Args:
        argv: The arguments after ``score-pairs`` (see ``--help``).

    Returns:
        The content of the written ``scores.json``.
    """
    parser = ArgumentParser(
        prog="python -m lightning_pref score-pairs",
        description=SCORE_PAIRS_HELP,
        exit_on_error=False,
    )
    parser.add_argument("--config", action="config", help="a YAML file of these arguments")
    parser.add_function_arguments(score_pairs, as_group=False, skip={"scorer"})
    parser.add_subclass_arguments(Scorer, "scorer", required=True, help="the scorer, by class_path")
    config = parser.instantiate_classes(parser.parse_args(argv))
    kwargs = {k: config[k] for k in ("input", "output", "scorer", "batch_size", "device")}
    return score_pairs(**kwargs)
