"""The evaluation report: medians, per-scorer win rates, the sampler section, sampler defaults."""

import json
import math

import pytest
import torch

from lightning_pref.evaluation.args import default_num_steps
from lightning_pref.evaluation.compare import SamplingOptions, evaluate_policies
from lightning_pref.evaluation.report import Z_95, score_stats
from lightning_pref.minipick import MiniPickPolicy
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.scoring import Scorer

SAMPLING = {"num_steps": 3, "guidance_scale": 5.0, "eta": 0.0}


class Brightness(Scorer):
    def forward(self, images, captions, timesteps=None):
        return images.float().mean(dim=(1, 2, 3))


class Darkness(Scorer):
    def forward(self, images, captions, timesteps=None):
        return -images.float().mean(dim=(1, 2, 3))


def test_score_stats_medians_means_and_win_rate_exact():
    """base [1, 2, 3, 10], tuned [2, 2, 5, 0]: medians (2 + 3) / 2 = 2.5 and (2 + 2) / 2 = 2
    (numpy's convention; torch.median would give 2 and 2); means 4 and 2.25; base population
    variance (9 + 4 + 1 + 36) / 4 = 12.5; outcomes [1, 0.5, 1, 0] -> win rate 0.625, squared
    deviations 0.140625 + 0.015625 + 0.140625 + 0.390625 = 0.6875, sample std sqrt(0.6875 / 3)."""
    s = score_stats(torch.tensor([1.0, 2.0, 3.0, 10.0]), torch.tensor([2.0, 2.0, 5.0, 0.0]))
    assert (s.base_median, s.tuned_median, s.base_mean, s.tuned_mean) == (2.5, 2.0, 4.0, 2.25)
    assert s.base_std == pytest.approx(math.sqrt(12.5), abs=1e-12) and s.win_rate == 0.625
    half = Z_95 * math.sqrt(0.6875 / 3) / 2
    assert s.win_rate_ci == pytest.approx((0.625 - half, min(1.0, 0.625 + half)), abs=1e-12)


def test_report_has_medians_per_scorer_win_rates_and_a_sampler_section():
    """Two tiny models (seeds 0, 1); ``dark`` is ``-gold``, so its win rate is 1 - gold's."""
    base, tuned = (TinyDiffusionPolicy(seed=s) for s in (0, 1))
    base.build(), tuned.build()
    report = evaluate_policies(
        base, tuned, ["a red circle"], {"gold": Brightness(), "dark": Darkness()}, "gold",
        num_samples=4, seed=0,
        options=SamplingOptions(batch_size=4, samples_per_prompt_for_diversity=0, **SAMPLING),
    )  # fmt: skip
    gold, dark = report.scores["gold"], report.scores["dark"]
    assert report.ties == 0  # different models: the opposite scorer's win rate is exactly 1 - it
    assert gold.win_rate == report.win_rate and gold.win_rate_ci == report.win_rate_ci
    assert dark.win_rate == pytest.approx(1.0 - report.win_rate, abs=1e-12)
    assert dark.tuned_median == pytest.approx(-gold.tuned_median, abs=1e-6)
    table = report.to_markdown_table()
    assert "| gold median |" in table and "| dark win rate | - |" in table
    assert "| gold win rate |" not in table  # the gold scorer's is the headline row
    assert "sampler: DDIM, 3 steps, cfg 5.0, eta 0.0" in table and "negative" not in table
    data = json.loads(report.to_json())
    assert data["sampler"] == "DDIM" and data["scores"]["dark"]["win_rate"] == dark.win_rate
    assert data["negative"] is None and data["merge_weight"] is None


def test_default_sampler_steps_minipick_10_others_20():
    """METHODS §2.5: DDIM 20 steps (CFG 5) for real models; MiniPick keeps its 10 steps."""
    assert default_num_steps(MiniPickPolicy()) == 10
    assert default_num_steps(TinyDiffusionPolicy()) == 20
