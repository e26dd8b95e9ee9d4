"""CaPO's calibrated rewards, Pareto pair selection and pair CSV (METHODS §11.4)."""

import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.data import read_pair_csv
from lightning_pref.data.calibrated import (
    CalibratedPair,
    calibrated_pairs,
    calibrated_rewards,
    pareto_front,
    select_pairs,
    write_pair_csv,
)
from lightning_pref.errors import DataError


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_calibration_exact_values():
    """One prompt, N = 3, one reward, scores (0, 1, 3):
    R_ca(x0) = (σ(0-1) + σ(0-3)) / 2 = (0.2689414 + 0.0474259) / 2 = 0.1581837
    R_ca(x1) = (σ(1-0) + σ(1-3)) / 2 = (0.7310586 + 0.1192029) / 2 = 0.4251307
    R_ca(x2) = (σ(3-0) + σ(3-1)) / 2 = (0.9525741 + 0.8807971) / 2 = 0.9166856
    They sum to N/2 = 1.5 (each pair contributes σ(d) + σ(-d) = 1, divided by N - 1).
    """
    out = calibrated_rewards(torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64))
    expected = [
        (_sig(-1) + _sig(-3)) / 2,
        (_sig(1) + _sig(-2)) / 2,
        (_sig(3) + _sig(2)) / 2,
    ]
    assert_close(out[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(out.sum(), torch.tensor(1.5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_calibration_is_per_reward_and_per_prompt():
    """[P=2, N=2, L=2]: with two samples R_ca = σ(R_i - R_other); columns and prompts separate."""
    scores = torch.tensor([[[0.0, 5.0], [2.0, 5.0]], [[1.0, -1.0], [0.0, 1.0]]])
    out = calibrated_rewards(scores)
    assert_close(out[0, :, 0], torch.tensor([_sig(-2), _sig(2)]))
    assert_close(out[0, :, 1], torch.tensor([0.5, 0.5]))
    assert_close(out[1, :, 1], torch.tensor([_sig(-2), _sig(2)]))
    assert_close(calibrated_rewards(scores * 10, temperature=10.0), out)
    with pytest.raises(DataError, match="at least 2"):
        calibrated_rewards(torch.zeros(1, 2))


# six samples, two rewards (hand-made; see test_pareto_selection_by_hand)
VALUES = torch.tensor(
    [[5.0, 0.0], [0.0, 5.0], [2.0, 2.0], [1.0, 1.0], [0.2, 4.5], [0.3, 4.6]], dtype=torch.float64
)


def test_pareto_fronts_by_hand():
    """Upper: 0 (best on reward 1), 1 (best on reward 2), 2 (nobody ≥ (2, 2) on both), 5
    ((0.3, 4.6): only 1 is higher on reward 2 and it is lower on reward 1). 3 is dominated by 2,
    4 by 5. Lower (nobody ≤ on both): 0 (worst on reward 2), 1 (worst on reward 1), 3 ((1, 1):
    every other point is above it somewhere), 4 ((0.2, 4.5): 1 has a lower reward 1 but a higher
    reward 2). 2 is above 3 and 5 above 4."""
    assert pareto_front(VALUES) == [0, 1, 2, 5]
    assert pareto_front(VALUES, upper=False) == [0, 1, 3, 4]
    assert pareto_front(torch.tensor([[1.0, 1.0], [1.0, 1.0]])) == [0, 1]  # ties do not dominate


def test_pareto_selection_by_hand():
    """Lower front without the upper one: {3, 4}. Means: 0: 2.5, 1: 2.5, 2: 2.0, 3: 1.0,
    4: 2.35, 5: 2.45. Pairs upper x lower with gap = mean_w - mean_l:
    (0,3) 1.5  (0,4) 0.15  (1,3) 1.5  (1,4) 0.15  (2,3) 1.0  (2,4) -0.35 dropped
    (5,3) 1.45 (5,4) 0.10."""
    pairs = select_pairs(VALUES)
    expected = [(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (5, 3), (5, 4)]
    assert [(w, lo) for w, lo, _ in pairs] == expected
    gaps = [g for _, _, g in pairs]
    assert gaps == pytest.approx([1.5, 0.15, 1.5, 0.15, 1.0, 1.45, 0.10], abs=1e-12)


def test_single_reward_is_max_against_min():
    pairs = calibrated_pairs(torch.tensor([[[0.3], [0.9], [0.1], [0.5]]]))
    assert [(p.index_w, p.index_l) for p in pairs] == [(1, 2)]
    cal = calibrated_rewards(torch.tensor([[0.3], [0.9], [0.1], [0.5]]))[:, 0]
    assert pairs[0].gap == pytest.approx(float(cal[1] - cal[2]), abs=1e-6)


def test_pairs_per_prompt_subsamples_with_a_seed():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 8, 2, generator=g)
    every = calibrated_pairs(scores)
    some = calibrated_pairs(scores, pairs_per_prompt=1, seed=1)
    assert calibrated_pairs(scores, pairs_per_prompt=1, seed=1) == some
    assert len(some) == 3 and [p.prompt for p in some] == [0, 1, 2]
    assert set(some) <= set(every)
    assert all(p.gap > 0 for p in every)


def test_csv_round_trip_labels_encode_the_gap(tmp_path):
    """label = (1 + Δ)/2: Δ = 0.5 -> 0.75, Δ = 0.1 -> 0.55."""
    pairs = [CalibratedPair(0, 2, 0, 0.5), CalibratedPair(1, 1, 0, 0.1)]
    files = [["a0.png", "a1.png", "a2.png"], ["b0.png", "b1.png"]]
    path = write_pair_csv(tmp_path / "pairs.csv", ["a cat", "a dog"], files, pairs)
    records = read_pair_csv(path)["train"]
    assert [r.caption for r in records] == ["a cat", "a dog"]
    assert [r.path_w.name for r in records] == ["a2.png", "b1.png"]
    assert [r.path_l.name for r in records] == ["a0.png", "b0.png"]
    assert [r.label for r in records] == pytest.approx([0.75, 0.55], abs=1e-12)
