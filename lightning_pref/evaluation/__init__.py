"""Evaluation: compare a tuned policy with its base (win rates, scores, diversity); reports.

``python -m lightning_pref evaluate`` (:mod:`lightning_pref.commands.evaluate`) drives these:
:mod:`~lightning_pref.evaluation.setup` loads the run and its baseline,
:mod:`~lightning_pref.evaluation.compare` samples and scores both,
:mod:`~lightning_pref.evaluation.report` holds the result, :mod:`~lightning_pref.evaluation.scorers`
the default scorers, :mod:`~lightning_pref.evaluation.prompt_sets` the prompt files and
:mod:`~lightning_pref.evaluation.base_cache` the reusable base-model samples.
"""

from lightning_pref.evaluation.args import EvaluateArgs, parse_evaluate_args
from lightning_pref.evaluation.compare import evaluate_policies, implicit_accuracy
from lightning_pref.evaluation.report import EvalReport, ScoreStats

__all__ = [
    "EvalReport",
    "EvaluateArgs",
    "ScoreStats",
    "evaluate_policies",
    "implicit_accuracy",
    "parse_evaluate_args",
]
