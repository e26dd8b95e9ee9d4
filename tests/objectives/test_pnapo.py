"""PNAPO's loss: exact values (arithmetic in each docstring) and its relation to DPO and SmPO."""

import math

import torch
from torch.testing import assert_close

from lightning_pref.objectives import PNAPO, DiffusionDPO, SmPO
from tests.objectives.test_objectives import make_pair


def _pair(pref_prob: float):
    # mse_w = 1, mse_l = 4, ref_w = 4, ref_l = 1 -> diff = (1 - 4) - (4 - 1) = -6
    return make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]], pref_prob=pref_prob)


def test_pnapo_exact_value():
    """Δr = 2 -> p = σ(2), 2p - 1 = tanh(1) = 0.7615942. β = 1/3, diff = -6:
    inside = -0.5 · (1/3) · 0.7615942 · (-6) = 0.7615942; loss = log(1 + e^-0.7615942) = 0.3843."""
    p = 1 / (1 + math.exp(-2.0))
    out = PNAPO(beta=1 / 3)(_pair(p))
    inside = math.tanh(1.0)
    assert_close(out.loss, torch.tensor(math.log1p(math.exp(-inside))), rtol=0, atol=1e-6)
    assert_close(out.metrics["beta_scale"], torch.tensor(math.tanh(1.0)), rtol=0, atol=1e-6)


def test_pnapo_hard_label_is_dpo_and_a_tie_is_no_push():
    """p = 1: scale 1, DiffusionDPO's loss; p = 0.5: scale 0, loss log 2 and no gradient."""
    assert_close(PNAPO(beta=0.1)(_pair(1.0)).loss, DiffusionDPO(beta=0.1)(_pair(1.0)).loss)
    tie = make_pair([[1.0]], [[2.0]], [[2.0]], [[1.0]], pref_prob=0.5)
    tie.pred_w.requires_grad_(True)
    loss = PNAPO(beta=100.0)(tie).loss
    assert_close(loss, torch.tensor(math.log(2.0)))
    (grad,) = torch.autograd.grad(loss, tie.pred_w)
    assert torch.count_nonzero(grad) == 0


def test_pnapo_is_smpo_with_gamma_one():
    """The reward-gap scaling is SmPO's smoothing factor γ(2p − 1) with γ = 1."""
    for p in (0.6, 0.9):
        assert_close(PNAPO(beta=0.2)(_pair(p)).loss, SmPO(beta=0.2, gamma=1.0)(_pair(p)).loss)
