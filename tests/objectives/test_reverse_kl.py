"""DiffusionEXO: reverse-KL pairwise loss on Diffusion-DPO's implicit rewards (METHODS §11.3)."""

import math

import torch
from torch.testing import assert_close

from lightning_pref.objectives import DiffusionDPO, DiffusionEXO
from tests.objectives.test_objectives import make_pair


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_exo_exact_value_hard_label():
    """mse_w = 1, mse_l = 4, ref_w = 4, ref_l = 1 (target 0), beta = 1/3:

    h_w = -0.5/3 * (1 - 4) = +0.5, h_l = -0.5/3 * (4 - 1) = -0.5
    p_w = softmax([0.5, -0.5])_0 = sigmoid(1) = 0.7310586, p_l = 0.2689414
    log p_tgt = [0, -10]  (hard label, floored at log_eps)
    loss = p_w * (log p_w - 0) + p_l * (log p_l + 10)
         = 0.7310586 * -0.3132617 + 0.2689414 * 8.6867383 = -0.2290126 + 2.3362237 = 2.1072111
    """
    pair = make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]])
    out = DiffusionEXO(beta=1.0 / 3.0)(pair)
    pw, pl = _sig(1.0), _sig(-1.0)
    expected = pw * math.log(pw) + pl * (math.log(pl) + 10.0)
    assert abs(expected - 2.1072111) < 1e-6
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)
    assert_close(out.metrics["p_model_w"], torch.tensor(pw))
    assert out.metrics["implicit_acc"].item() == 1.0


def test_exo_exact_value_soft_label():
    """Same pair with pref_prob = 0.75: log p_tgt = [log 0.75, log 0.25]
    loss = p_w (log p_w - log 0.75) + p_l (log p_l - log 0.25) = KL(Bern(0.7311) || Bern(0.75))
         = 0.7310586 * (-0.3132617 + 0.2876821) + 0.2689414 * (-1.3132617 + 1.3862944) = 0.0009413
    """
    pair = make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]], pref_prob=0.75)
    out = DiffusionEXO(beta=1.0 / 3.0)(pair)
    pw, pl = _sig(1.0), _sig(-1.0)
    expected = pw * (math.log(pw) - math.log(0.75)) + pl * (math.log(pl) - math.log(0.25))
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)


def test_policy_equal_to_reference_gives_log_half_plus_five():
    """inside = 0: p = (1/2, 1/2), loss = 1/2 log 1/2 + 1/2 (log 1/2 + 10) = 5 - log 2."""
    pair = make_pair([[1.0, 2.0]], [[0.5, 0.5]], [[1.0, 2.0]], [[0.5, 0.5]])
    assert_close(DiffusionEXO()(pair).loss, torch.tensor(5 - math.log(2)), rtol=0, atol=1e-6)


def test_mode_seeking_minimum_at_the_target_log_odds():
    """Reverse KL to p_tgt = (1, e^-10) (unnormalised, as fPO) is smallest at inside ≈ 10, while
    DPO's loss keeps falling: EXO stops pushing, DPO does not. Only the winner's model MSE moves,
    to 1 - 0.01·inside (ref MSEs and mse_l = 1), so beta = 200 gives -0.5·200·(-0.01·inside)."""
    exo_losses, dpo_losses = [], []
    for inside in (0.0, 4.0, 9.0, 10.0, 11.0, 14.0):
        pair = make_pair([[math.sqrt(1 - 0.01 * inside)]], [[1.0]], [[1.0]], [[1.0]])
        exo_losses.append(DiffusionEXO(beta=200.0)(pair).loss.item())
        dpo_losses.append(DiffusionDPO(beta=200.0)(pair).loss.item())
    assert exo_losses[0] > exo_losses[1] > exo_losses[2] > exo_losses[3]  # falls up to 10
    assert exo_losses[3] < exo_losses[4] < exo_losses[5]  # and rises after it
    assert all(
        a > b for a, b in zip(dpo_losses, dpo_losses[1:], strict=False)
    )  # DPO: falls throughout


def test_exo_loss_falls_when_policy_favours_winner():
    ref = [[1.0, -1.0], [0.5, -0.5]]
    closer = [[0.5, -0.5], [0.25, -0.25]]
    exo = DiffusionEXO(beta=10.0)
    assert exo(make_pair(closer, ref, ref, ref)).loss < exo(make_pair(ref, closer, ref, ref)).loss
