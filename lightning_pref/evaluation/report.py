"""What ``evaluate`` reports: win rates with confidence intervals, per-scorer statistics, the table.

- **Win rate** of tuned over baseline under a scorer: per sample 1 (win), 0.5 (tie: scores within
  ``TIE_TOLERANCE``) or 0 (loss), averaged. Its 95 % CI is the normal approximation on these
  outcomes, ``rate ± 1.96 · s / sqrt(n)`` with ``s`` their sample std, clipped to [0, 1] ([0, 1]
  if n = 1). The gold scorer's win rate is the headline; every scorer gets its own too.
- **Median** (the statistic the papers report: METHODS §4.5, §7), **mean** and population std of
  every scorer for each model. The median of an even count is the mean of the two middle values
  (``numpy.median``'s convention, ``torch.quantile(x, 0.5)``; ``torch.median`` would take the
  lower one).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TIE_TOLERANCE",
    "Z_95",
    "EvalReport",
    "ScoreStats",
    "report_from_scores",
    "score_stats",
    "win_stats",
]

TIE_TOLERANCE = 1e-6
Z_95 = 1.959964  # two-sided 95 % quantile of the normal distribution


@dataclass(frozen=True)
class ScoreStats:
    """One scorer's statistics for each model, and the tuned model's win rate under it."""

    base_mean: float
    base_std: float  # population std
    tuned_mean: float
    tuned_std: float
    base_median: float | None = None  # None: not computed (reports written before medians)
    tuned_median: float | None = None
    win_rate: float | None = None  # tuned vs baseline under this scorer: win 1, tie 0.5, loss 0
    win_rate_ci: tuple[float, float] | None = None  # 95 % normal approximation, clipped


@dataclass(frozen=True)
class EvalReport:
    """What :func:`~lightning_pref.evaluation.evaluate_policies` measures (``to_json``: all)."""

    gold: str  # the scorer that decides wins
    win_rate: float  # mean outcome of tuned vs baseline: win 1, tie 0.5, loss 0
    win_rate_ci: tuple[float, float]  # 95 % normal-approximation CI, clipped to [0, 1]
    wins: int
    ties: int
    losses: int
    scores: dict[str, ScoreStats]  # by scorer name
    diversity_base: float | None  # mean pairwise RMS pixel distance; None: not measured
    diversity_tuned: float | None
    num_samples: int
    num_prompts: int  # distinct prompts sampled
    seed: int
    num_steps: int
    guidance_scale: float
    eta: float
    implicit_acc: float | None = None  # DPO implicit accuracy on validation pairs
    tuned: str = "tuned"  # what was evaluated (the checkpoint, in the CLI)
    baseline: str = "base"
    sampler: str = "DDIM"  # the sampler's name (lightning_pref.models.sampling)
    negative: str | None = None  # negative model in the tuned model's unconditional branch
    baseline_negative: str | None = None  # the same for the baseline
    merge_weight: float | None = None  # m of negative guidance (METHODS §11.1); None: no negative

    def to_json(self) -> str:
        """The report as indented JSON with sorted keys."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def sampler_line(self) -> str:
        """The sampler settings (and negative guidance, if any) in one line."""
        line = (
            f"sampler: {self.sampler}, {self.num_steps} steps, cfg {self.guidance_scale}, "
            f"eta {self.eta}"
        )
        if self.negative is not None or self.baseline_negative is not None:
            line += (
                f"; negative guidance (merge_weight {self.merge_weight}): tuned "
                f"{self.negative or 'none'}, baseline {self.baseline_negative or 'none'}"
            )
        return line

    def to_markdown_table(self) -> str:
        """A ``metric | baseline | tuned`` Markdown table, the sampler and the other settings."""
        wtl = f"W/T/L {self.wins}/{self.ties}/{self.losses}"
        rows = [(f"win rate ({self.gold})", "-", f"{_rate(self.win_rate, self.win_rate_ci)} {wtl}")]
        for name, s in self.scores.items():
            if s.base_median is not None and s.tuned_median is not None:
                rows.append((f"{name} median", f"{s.base_median:.4f}", f"{s.tuned_median:.4f}"))
            cells = _pm(s.base_mean, s.base_std), _pm(s.tuned_mean, s.tuned_std)
            rows.append((f"{name} mean ± std", *cells))
            if s.win_rate is not None and s.win_rate_ci is not None and name != self.gold:
                rows.append((f"{name} win rate", "-", _rate(s.win_rate, s.win_rate_ci)))
        if self.diversity_base is not None and self.diversity_tuned is not None:
            rows.append(("diversity", f"{self.diversity_base:.4f}", f"{self.diversity_tuned:.4f}"))
        if self.implicit_acc is not None:
            rows.append(("implicit accuracy (val pairs)", "-", f"{self.implicit_acc:.4f}"))
        lines = ["| metric | baseline | tuned |", "|---|---:|---:|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        lines.append(f"\n{self.sampler_line()}")
        lines.append(
            f"{self.num_samples} samples, {self.num_prompts} prompts, seed {self.seed}; "
            f"tuned: {self.tuned}; baseline: {self.baseline}"
        )
        return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def _rate(rate: float, ci: tuple[float, float]) -> str:
    return f"{rate:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def win_stats(tuned: Tensor, base: Tensor) -> tuple[float, tuple[float, float], list[int]]:
    """Win rate, its clipped 95 % CI and [wins, ties, losses] from ``[N]`` paired scores."""
    diff = tuned.double() - base.double()  # [N]
    outcome = torch.where(diff.abs() <= TIE_TOLERANCE, 0.5, (diff > 0).double())  # [N]
    n, rate = outcome.numel(), float(outcome.mean())
    half = Z_95 * float(outcome.std()) / math.sqrt(n) if n > 1 else math.inf
    counts = [int((outcome == v).sum()) for v in (1.0, 0.5, 0.0)]
    return rate, (max(0.0, rate - half), min(1.0, rate + half)), counts


def score_stats(base: Tensor, tuned: Tensor) -> ScoreStats:
    """Means, population stds, medians and the win rate of two paired ``[N]`` score vectors."""
    base, tuned = base.double(), tuned.double()
    moments = [float(v) for x in (base, tuned) for v in (x.mean(), x.std(correction=0))]
    medians = [float(torch.quantile(x, 0.5)) for x in (base, tuned)]
    rate, ci, _ = win_stats(tuned, base)
    return ScoreStats(*moments, *medians, win_rate=rate, win_rate_ci=ci)


def report_from_scores(
    gold: str,
    base_s: dict[str, Tensor],
    tuned_s: dict[str, Tensor],
    diversity: tuple[float | None, float | None],
    plan: tuple[list[str], list[int]],
    sampling: dict[str, Any],
    seed: int,
) -> EvalReport:
    """The :class:`EvalReport` of two models' scores of the same samples (``gold`` decides wins).

    ``plan`` is the captions and seeds sampled, ``sampling`` the sampler settings
    (``num_steps``, ``guidance_scale``, ``eta``) and ``diversity`` (base, tuned) or Nones.
    """
    rate, ci, counts = win_stats(tuned_s[gold], base_s[gold])
    return EvalReport(
        gold=gold,
        win_rate=rate,
        win_rate_ci=ci,
        wins=counts[0],
        ties=counts[1],
        losses=counts[2],
        scores={name: score_stats(base_s[name], tuned_s[name]) for name in tuned_s},
        diversity_base=diversity[0],
        diversity_tuned=diversity[1],
        num_samples=len(plan[0]),
        num_prompts=len(set(plan[0])),
        seed=seed,
        num_steps=sampling["num_steps"],
        guidance_scale=float(sampling["guidance_scale"]),
        eta=float(sampling["eta"]),
    )
