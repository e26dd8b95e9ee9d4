"""DiffusionNPO: Diffusion-DPO on the swapped pair (METHODS §11.1)."""

import math

import torch
from torch.testing import assert_close

from lightning_pref.objectives import DiffusionDPO, DiffusionNPO
from lightning_pref.types import DenoisePair
from tests.objectives.test_objectives import make_pair


def _random_pair(seed: int = 0) -> DenoisePair:
    g = torch.Generator().manual_seed(seed)
    pw, pl, rw, rl, tw, tl = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(6))
    return DenoisePair(pw, pl, tw, tl, rw, rl, torch.tensor([1, 500, 999]), torch.ones(3))


def test_npo_exact_value():
    """Target 0, tensors [1, 1, 1, 2], so each MSE is the square of the entry:

    mse_w = 1, mse_l = 4, ref_w = 4, ref_l = 1  -> diff = (1 - 4) - (4 - 1) = -6
    NPO: inside = +0.5 * beta * diff = -3 * beta; with beta = 1/3, inside = -1
    loss = -log sigmoid(-1) = log(1 + e) = 1.31326169
    implicit_acc = mean(inside > 0) = 0: the model prefers the human winner, NPO wants the loser.
    """
    pair = make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]])
    out = DiffusionNPO(beta=1.0 / 3.0)(pair)
    assert_close(out.loss, torch.tensor(math.log1p(math.e)), rtol=0, atol=1e-6)
    assert out.metrics["implicit_acc"].item() == 0.0
    # metric names follow the human labels, not the swapped slots
    assert_close(out.metrics["model_mse_w"], torch.tensor(1.0))
    assert_close(out.metrics["model_mse_l"], torch.tensor(4.0))
    assert_close(out.metrics["ref_mse_w"], torch.tensor(4.0))
    assert_close(out.metrics["ref_mse_l"], torch.tensor(1.0))


def test_npo_is_dpo_on_the_swapped_pair_bit_for_bit():
    pair = _random_pair()
    swapped = DenoisePair(
        pair.pred_l,
        pair.pred_w,
        pair.target_l,
        pair.target_w,
        pair.ref_pred_l,
        pair.ref_pred_w,
        pair.timesteps,
        pair.pref_prob,
    )
    for beta in (1000.0, 2000.0, 0.5):
        npo, dpo = DiffusionNPO(beta)(pair), DiffusionDPO(beta)(swapped)
        assert torch.equal(npo.loss, dpo.loss)
        assert torch.equal(npo.metrics["implicit_acc"], dpo.metrics["implicit_acc"])
        assert torch.equal(npo.metrics["model_mse_w"], dpo.metrics["model_mse_l"])


def test_npo_loss_falls_when_policy_favours_the_loser():
    """Reference at distance 1; the policy halves the error of one image."""
    ref = [[1.0, -1.0], [0.5, -0.5]]
    closer = [[0.5, -0.5], [0.25, -0.25]]
    favour_w, favour_l = make_pair(closer, ref, ref, ref), make_pair(ref, closer, ref, ref)
    npo = DiffusionNPO()
    assert npo(favour_l).loss < npo(favour_w).loss
    assert DiffusionNPO.trains_negative


def test_npo_default_beta_is_the_sd15_launcher_in_our_convention():
    """Official SD1.5: -logsigmoid(500 (ref_diff - model_diff)) = -logsigmoid(-0.5 * 1000 * ...)."""
    pair = _random_pair(1)
    terms_inside = 500.0 * (
        ((pair.ref_pred_l - pair.target_l) ** 2).flatten(1).mean(1)
        - ((pair.ref_pred_w - pair.target_w) ** 2).flatten(1).mean(1)
        - ((pair.pred_l - pair.target_l) ** 2).flatten(1).mean(1)
        + ((pair.pred_w - pair.target_w) ** 2).flatten(1).mean(1)
    )  # diffusers form on the swapped pair: beta_d * (ref_diff' - model_diff')
    expected = -torch.nn.functional.logsigmoid(terms_inside).mean()
    assert_close(DiffusionNPO()(pair).loss, expected, rtol=1e-5, atol=1e-6)
    assert DiffusionNPO().beta == 1000.0
