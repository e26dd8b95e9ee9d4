"""CaPO: squared loss of the weighted implicit gap against the calibrated gap (METHODS §11.4)."""

import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.objectives import CaPO
from lightning_pref.objectives.capo import gap_to_pref_prob, pref_prob_to_gap
from tests.objectives.test_objectives import make_pair


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _pair(pref_prob: float, timesteps=(0,)):
    """mse_w = 1, mse_l = 4, ref_w = 4, ref_l = 1 per pair, so diff = -6."""
    n = len(timesteps)
    pair = make_pair(
        [[1.0, 1.0]] * n, [[2.0, 2.0]] * n, [[2.0, 2.0]] * n, [[1.0, 1.0]] * n, pref_prob=pref_prob
    )
    return type(pair)(**{**pair.__dict__, "timesteps": torch.tensor(timesteps)})


def test_capo_exact_value_unweighted():
    """pref_prob = 0.75 -> Δ = 2 * 0.75 - 1 = 0.5; beta = 1/3, w_t = 1:
    g = -0.5 * (1/3) * (-6) = 1;  loss = (0.5 - 1)^2 = 0.25."""
    out = CaPO(beta=1.0 / 3.0, weighting=False)(_pair(0.75))
    assert_close(out.loss, torch.tensor(0.25), rtol=0, atol=1e-6)
    assert_close(out.metrics["calibrated_gap"], torch.tensor(0.5))
    assert_close(out.metrics["implicit_gap"], torch.tensor(1.0))
    assert out.metrics["implicit_acc"].item() == 1.0


def test_capo_exact_value_with_the_logsnr_weight():
    """A two-step schedule bound by hand: ā_0 = sigmoid(1.5) (λ = 1.5), ā_1 = sigmoid(-0.5)
    (λ = -0.5). With b = 1.5: w_0 = sigmoid(0) = 0.5, w_1 = sigmoid(2) = 0.8807971.
    Δ = 0.5, g = w_t * 1 (beta = 1/3 as above):
    loss = mean((0.5 - 0.5)^2, (0.5 - 0.8807971)^2) = (0 + 0.1450064) / 2 = 0.0725032."""
    capo = CaPO(beta=1.0 / 3.0)
    capo.bind_schedule(torch.tensor([_sig(1.5), _sig(-0.5)]))
    out = capo(_pair(0.75, timesteps=(0, 1)))
    expected = ((0.5 - 0.5) ** 2 + (0.5 - _sig(2.0)) ** 2) / 2
    assert abs(expected - 0.0725032) < 1e-6
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)
    assert_close(out.metrics["timestep_weight"], torch.tensor((0.5 + _sig(2.0)) / 2))


def test_weight_favours_high_noise_on_the_sd_schedule():
    """SD1.5: ā_0 = 1 - 0.00085 -> λ_0 = log(0.99915 / 0.00085) = 7.0695, w_0 = sigmoid(-5.5695)
    = 0.003798; at t = 999 ā is 0.00466 -> λ = -5.36, w ≈ 0.9990."""
    w = CaPO().timestep_weight(torch.tensor([0, 250, 500, 750, 999]))
    assert_close(w[0], torch.tensor(_sig(1.5 - math.log(0.99915 / 0.00085))), rtol=1e-4, atol=0)
    assert (w[1:] > w[:-1]).all()
    assert w[-1] > 0.99
    assert torch.equal(CaPO(weighting=False).timestep_weight(torch.tensor([0, 999])), torch.ones(2))


def test_minipick_schedule_is_configurable():
    """linear 1e-4 -> 0.02: ā_0 = 1 - 1e-4, so w_0 = sigmoid(1.5 - log(0.9999 / 0.0001)).
    (diffusers builds the betas in float32, so 1 - ā_0 is off by ~2e-4 relative.)"""
    capo = CaPO(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    expected = torch.tensor([_sig(1.5 - math.log(0.9999 / 0.0001))])
    assert_close(capo.timestep_weight(torch.tensor([0])), expected, rtol=1e-3, atol=0)
    assert not torch.allclose(CaPO().timestep_weight(torch.tensor([0])), expected, rtol=0.1)


@pytest.mark.parametrize("gap", [-1.0, -0.3, 0.0, 0.25, 1.0])
def test_gap_round_trips_through_pref_prob(gap):
    p = gap_to_pref_prob(torch.tensor(gap, dtype=torch.float64))
    assert 0.0 <= float(p) <= 1.0
    assert float(pref_prob_to_gap(p)) == pytest.approx(gap, abs=1e-12)
    # swapping the images (p -> 1 - p) negates the gap
    assert float(pref_prob_to_gap(1 - p)) == pytest.approx(-gap, abs=1e-12)


def test_loss_is_zero_at_the_calibrated_gap_and_grows_past_it():
    """Unlike DPO the loss does not keep falling: overshooting the target costs."""
    capo = CaPO(beta=1.0 / 3.0, weighting=False)
    at_target = capo(_pair(1.0)).loss  # Δ = 1 = g
    overshoot = capo(_pair(0.75)).loss  # Δ = 0.5 < g = 1
    assert at_target.item() == pytest.approx(0.0, abs=1e-12)
    assert overshoot > at_target
