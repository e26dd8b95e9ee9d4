"""Step objectives (SPO, TailorPO, ...): exact values, clamp gradients, direction, training."""

import inspect
import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref import objectives
from lightning_pref.objectives import SPO, StepObjective, TailorPO
from lightning_pref.types import StepPair

STEP_OBJECTIVES = [
    getattr(objectives, name)
    for name in objectives.__all__
    if inspect.isclass(getattr(objectives, name))
    and issubclass(getattr(objectives, name), StepObjective)
    and not inspect.isabstract(getattr(objectives, name))
]


def make_step_pair(log_ratio_w, log_ratio_l, logp_w=-1.0, logp_l=-2.0) -> StepPair:
    """Pairs with the given policy-minus-reference log-ratios (reference at fixed logp)."""
    lrw = torch.as_tensor(log_ratio_w, dtype=torch.float64)
    lrl = torch.as_tensor(log_ratio_l, dtype=torch.float64)
    ref_w, ref_l = torch.full_like(lrw, logp_w), torch.full_like(lrl, logp_l)
    return StepPair(ref_w + lrw, ref_l + lrl, ref_w, ref_l, torch.zeros_like(lrw).long())


def test_all_step_objectives_found():
    assert {SPO, TailorPO} <= set(STEP_OBJECTIVES)


@pytest.mark.parametrize("objective_cls", STEP_OBJECTIVES, ids=lambda c: c.__name__)
def test_policy_equals_reference_ratio_one_loss_log2(objective_cls):
    """logp == ref_logp for both transitions: every ratio is exactly 1, inside = 0, loss = log 2."""
    g = torch.Generator().manual_seed(0)
    logp_w, logp_l = torch.randn(5, generator=g), torch.randn(5, generator=g)
    pair = StepPair(logp_w, logp_l, logp_w.clone(), logp_l.clone(), torch.zeros(5).long())
    out = objective_cls()(pair)
    assert out.metrics["ratio_win"].item() == 1.0
    assert out.metrics["ratio_lose"].item() == 1.0
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_spo_exact_value():
    """beta = 10, clip = 0.1. Winner ratio 1.05 (inside the clamp), loser ratio 0.8 -> 0.9:

    inside = 10 * (log 1.05 - log 0.9) = 10 * (0.0487902 + 0.1053605) = 1.5415067
    loss   = log(1 + e^-1.5415067) = 0.1939687...
    """
    pair = make_step_pair([math.log(1.05)], [math.log(0.8)])
    out = SPO(beta=10.0, clip=0.1)(pair)
    inside = 10 * (math.log(1.05) - math.log(0.9))
    assert_close(out.loss, torch.tensor(math.log1p(math.exp(-inside)), dtype=torch.float64))
    assert out.loss.item() == pytest.approx(0.1939687, abs=1e-6)
    assert out.metrics["clip_frac"].item() == 1.0  # the loser's ratio left [0.9, 1.1]
    assert out.metrics["ratio_lose"].item() == pytest.approx(0.8)


def test_tailorpo_exact_value_without_clamp():
    """TailorPO default: beta = 10, no clamp. Same ratios as above:

    inside = 10 * (log 1.05 - log 0.8) = 10 * (0.0487902 + 0.2231436) = 2.7193372
    loss   = log(1 + e^-2.7193372) = 0.0638368...
    Two pairs averaged: the second has both ratios 1 -> log 2; mean = (0.0638368 + 0.6931472) / 2.
    """
    pair = make_step_pair([math.log(1.05), 0.0], [math.log(0.8), 0.0])
    out = TailorPO(beta=10.0)(pair)
    first = math.log1p(math.exp(-10 * (math.log(1.05) - math.log(0.8))))
    assert first == pytest.approx(0.0638368, abs=1e-6)
    expected = torch.tensor((first + math.log(2)) / 2, dtype=torch.float64)
    assert_close(out.loss, expected)
    assert out.metrics["implicit_acc"].item() == 0.5


def test_tailorpo_with_clip_is_spo():
    pair = make_step_pair([0.3, -0.02, 0.01], [0.05, -0.4, 0.02])
    assert_close(TailorPO(beta=3.0, clip=0.1)(pair).loss, SPO(beta=3.0, clip=0.1)(pair).loss)


@pytest.mark.parametrize("log_ratio", [math.log(1.2), math.log(0.85), math.log(1.05)])
def test_clamp_zeroes_gradient_outside_trust_region(log_ratio):
    """d loss / d logp_w is 0 once the ratio leaves [0.9, 1.1], nonzero inside."""
    logp_w = torch.tensor([-1.0 + log_ratio], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0], dtype=torch.float64)
    pair = StepPair(logp_w, ref - 1, ref, ref - 1, torch.zeros(1).long())
    SPO(beta=10.0, clip=0.1)(pair).loss.backward()
    inside = 0.9 <= math.exp(log_ratio) <= 1.1
    assert (logp_w.grad.abs().item() > 1e-3) == inside


def test_spo_gradient_value_inside_clamp():
    """Inside the clamp d loss/d logp_w = -beta * sigmoid(-inside): -beta/2 at ratios 1 and 1."""
    logp_w = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    SPO(beta=10.0)(StepPair(logp_w, zero, zero, zero, zero.long())).loss.backward()
    assert logp_w.grad.item() == pytest.approx(-5.0)


@pytest.mark.parametrize("objective_cls", STEP_OBJECTIVES, ids=lambda c: c.__name__)
def test_loss_falls_when_policy_favours_winner(objective_cls):
    favour_w = make_step_pair([0.05, 0.02], [-0.05, -0.02])
    favour_l = make_step_pair([-0.05, -0.02], [0.05, 0.02])
    objective = objective_cls()
    assert objective(favour_w).loss < objective(favour_l).loss


def test_bad_clip_is_rejected():
    with pytest.raises(ValueError, match="clip"):
        SPO(clip=1.5)


@pytest.mark.parametrize("objective_cls", STEP_OBJECTIVES, ids=lambda c: c.__name__)
def test_large_log_ratios_stay_finite(objective_cls):
    """A log-ratio of ±200 (exp overflows float32) must give a finite loss and gradient."""
    logp_w = torch.tensor([200.0], requires_grad=True)
    zero = torch.zeros(1)
    out = objective_cls()(StepPair(logp_w, zero - 200.0, zero, zero, zero.long()))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp_w.grad).all()
