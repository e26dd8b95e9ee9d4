"""Exact values for SmPO, InPO, DSPO, MaPO and Diffusion-KTO (arithmetic in each docstring)."""

import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.models.noising import DDIMInversion, ForwardNoising, ReNoiseInversion
from lightning_pref.objectives import DSPO, DSPOSDXL, DiffusionDPO, DiffusionKTO, InPO, MaPO, SmPO
from lightning_pref.objectives.mapo import snr_weight
from tests.objectives.test_objectives import make_labeled, make_pair


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# One pair, target 0, tensors [1, 1, 1, 2]: mse is the square of the entry.
# mse_w = 1, mse_l = 4, ref_w = 4, ref_l = 1 -> diff = (1 - 4) - (4 - 1) = -6.
def _pair(pref_prob: float = 1.0):
    return make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]], pref_prob=pref_prob)


def test_smpo_exact_value():
    """p = 0.75, γ = 10 -> factor γ(2p-1) = 10·0.5 = 5. β = 1/15, diff = -6:
    inside = -0.5 · (1/15) · 5 · (-6) = 1;  loss = -log σ(1) = log(1 + e^-1) = 0.3132617."""
    out = SmPO(beta=1 / 15, gamma=10.0)(_pair(0.75))
    assert_close(out.loss, torch.tensor(math.log1p(math.exp(-1.0))), rtol=0, atol=1e-6)
    assert_close(out.metrics["smoothing_factor"], torch.tensor(5.0))
    assert out.metrics["implicit_acc"].item() == 1.0


def test_smpo_tie_gives_no_push():
    """p = 0.5 -> factor 0 -> inside 0 -> loss = log 2 and zero gradient, whatever the MSEs."""
    pair = _pair(0.5)
    pred_w = pair.pred_w.clone().requires_grad_(True)
    pair = type(pair)(pred_w, *[getattr(pair, f) for f in list(pair.__dataclass_fields__)[1:]])
    out = SmPO()(pair)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2))
    assert pred_w.grad.abs().max().item() == 0.0


def test_smpo_strength_grows_with_p():
    """Smoothed labels scale the push: with the winner favoured, loss falls as p rises."""
    losses = [SmPO(beta=0.05)(_pair(p)).loss.item() for p in (0.55, 0.65, 0.73)]
    assert losses[0] > losses[1] > losses[2]


def test_smpo_hard_labels_equal_dpo_with_beta_times_gamma(caplog):
    """p = 1 -> factor γ: SmPO(β, γ) == DPO(β·γ), and a warning says so."""
    with caplog.at_level("WARNING", logger="lightning_pref.objectives"):
        smpo = SmPO(beta=0.02, gamma=10.0)(_pair(1.0)).loss
    assert_close(smpo, DiffusionDPO(beta=0.2)(_pair(1.0)).loss)
    assert "hard labels" in caplog.text


def test_inpo_is_dpo_loss_with_inversion_noising():
    """Same loss as DPO at the same β (β = 1/3: inside = -0.5·(1/3)·(-6) = 1)."""
    out = InPO(beta=1 / 3)(_pair())
    assert_close(out.loss, torch.tensor(math.log1p(math.exp(-1.0))), rtol=0, atol=1e-6)
    noising = InPO().default_noising()
    assert isinstance(noising, DDIMInversion)
    assert (noising.num_steps, noising.extra_noise) == (10, 0.1)
    assert InPO().beta == 2000.0
    assert isinstance(SmPO().default_noising(), ReNoiseInversion)
    assert SmPO().default_noising().num_steps == 5
    assert isinstance(DiffusionDPO().default_noising(), ForwardNoising)


def test_dspo_exact_value():
    """β = 1/3, diff = -6 -> inside = 1, coef = β(1 - σ(1)) = (1/3)(0.2689414) = 0.0896471.
    Residual per entry = (pred_w - target) - coef·(pred_w - ref_w) = 1 - 0.0896471·(1 - 2)
    = 1.0896471; loss = mean(residual²) = 1.1873309."""
    coef = (1 / 3) * (1 - sigmoid(1.0))
    out = DSPO(beta=1 / 3)(_pair())
    assert_close(out.loss, torch.tensor((1 + coef) ** 2), rtol=0, atol=1e-6)
    assert out.metrics["implicit_acc"].item() == 1.0


def test_dspo_tiny_beta_is_winner_sft():
    """β → 0: coef → 0 and the loss is the winner's MSE, 1 here (as SFT)."""
    assert DSPO(beta=1e-12)(_pair()).loss.item() == pytest.approx(1.0)


def test_mapo_exact_value():
    """s = 0.5, T = 1 (scale), β = 0.1. mse_w = 1, mse_l = 4:
    f(x) = x/(e^x - 1): f(0.5) = 0.5/0.6487213 = 0.7707470, f(2) = 2/6.3890561 = 0.3130353,
    lo = 0.4577117; loss = mean(mse_w) - 0.1·log σ(0.4577117) = 1 + 0.1·0.4902 = 1.0490245."""
    lo = 0.5 / math.expm1(0.5) - 2 / math.expm1(2.0)
    expected = 1 - 0.1 * math.log(sigmoid(lo))
    out = MaPO(beta=0.1, snr=0.5, scale=1.0)(_pair())
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)
    assert_close(out.metrics["log_odds"], torch.tensor(lo))
    assert not MaPO.requires_reference


def test_mapo_ignores_reference():
    pair = _pair()
    no_ref = type(pair)(*[getattr(pair, f) for f in list(pair.__dataclass_fields__)[:4]],
                        None, None, pair.timesteps, pair.pref_prob)  # fmt: skip
    assert_close(MaPO()(no_ref).loss, MaPO()(pair).loss)


def test_snr_weight_limit_at_zero():
    x = torch.tensor([0.0, 1e-9, 1.0])
    assert_close(snr_weight(x), torch.tensor([1.0, 1.0, 1 / math.expm1(1.0)]))


def test_kto_exact_value_kl_zero():
    """Target 0, entries [1, 1, 1, 2]. Image 0 desirable: mse 1, ref 4 -> g = 3.
    Image 1 undesirable: mse 4, ref 1 -> g = -3. kl = clamp(mean(3, -3), 0) = 0.
    β = 1/3: h0 = σ(+1·(1/3)·3) = σ(1), h1 = σ(-1·(1/3)·(-3)) = σ(1);
    loss = mean(1 - σ(1), 1 - σ(1)) = 0.2689414."""
    batch = make_labeled([[1.0, 1.0], [2.0, 2.0]], [[2.0, 2.0], [1.0, 1.0]], [1, -1])
    out = DiffusionKTO(beta=1 / 3)(batch)
    assert_close(out.loss, torch.tensor(1 - sigmoid(1.0)), rtol=0, atol=1e-6)
    assert out.metrics["kl"].item() == 0.0
    assert out.metrics["implicit_acc"].item() == 1.0


def test_kto_exact_value_with_reference_point_and_weights():
    """Both desirable: g0 = 4 - 1 = 3 (mse 1, ref 4), g1 = 2 - 1 = 1 (mse 1, ref 2) -> kl = 2.
    β = 1: h0 = σ(3 - 2) = σ(1), h1 = σ(1 - 2) = σ(-1).
    loss = mean(1 - σ(1), 1 - σ(-1)) = mean(0.2689414, 0.7310586) = 0.5.
    Then image 1 undesirable with λ_u = 2: g stays (3, 1), kl = 2; h1 = σ(-1·(1 - 2)) = σ(1):
    loss = mean(1·(1 - σ(1)), 2·(1 - σ(1))) = 1.5·0.2689414 = 0.4034121."""
    pred, ref = [[1.0], [1.0]], [[2.0], [math.sqrt(2.0)]]
    out = DiffusionKTO(beta=1.0)(make_labeled(pred, ref, [1, 1]))
    assert_close(out.loss, torch.tensor(0.5), rtol=0, atol=1e-6)
    assert_close(out.metrics["kl"], torch.tensor(2.0))
    weighted = DiffusionKTO(beta=1.0, lambda_undesirable=2.0)(make_labeled(pred, ref, [1, -1]))
    assert_close(weighted.loss, torch.tensor(1.5 * (1 - sigmoid(1.0))), rtol=0, atol=1e-6)


def test_global_mean_single_process_and_over_ranks():
    """One process: (1 + 2 + 6) / 3 = 3. Two ranks with batches [1, 2, 6] and [10] (the module's
    sum over ranks, faked): (9 + 10) / (3 + 1) = 4.75, not the mean of the two means (7.5)."""
    kto = DiffusionKTO()
    assert kto.global_mean(torch.tensor([1.0, 2.0, 6.0])).item() == 3.0
    other_rank = torch.tensor([10.0, 1.0])  # its [sum, count]
    kto.set_sum_over_ranks(lambda total: total + other_rank)
    assert kto.global_mean(torch.tensor([1.0, 2.0, 6.0])).item() == 4.75


def test_dspo_sdxl_exact_values():
    """β = 1/3, diff = -6 -> inside = 1, w = 1 - σ(1) = 0.2689414; d = pred_w - ref_w = 1 - 2 = -1
    per entry, so mean(d²) = 1 ≥ 0.1: far branch, loss = mean((w·d)²) = w² = 0.0723295.
    The branches differ when |d| ≠ 1: pred_w = 1, ref_w = 3 (d = -2, mean(d²) = 4), pred_l = 2,
    ref_l = 1: mse 1, 4 and ref 9, 1 -> diff = -3 - 8 = -11; β = 2/11 -> inside = 1 again.
    Threshold 0.1 (≤ 4): far, loss = mean((w·d)²) = 4w² = 0.2893179; threshold 5 (> 4): near,
    loss = mean(w²) = w² = 0.0723295. With d = 0 (policy at the reference, inside 0, w = 0.5):
    near branch, loss = 0.25."""
    w = 1 - sigmoid(1.0)
    tol = {"rtol": 0, "atol": 1e-6}
    assert_close(DSPOSDXL(beta=1 / 3)(_pair()).loss, torch.tensor(w**2), **tol)
    moved = make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[3.0, 3.0]], [[1.0, 1.0]])
    far = DSPOSDXL(beta=2 / 11)(moved)
    assert_close(far.loss, torch.tensor(4 * w**2), **tol)
    assert far.metrics["implicit_acc"].item() == 1.0
    assert_close(DSPOSDXL(beta=2 / 11, threshold=5.0)(moved).loss, torch.tensor(w**2), **tol)
    at_ref = make_pair([[2.0, 2.0]], [[1.0, 1.0]], [[2.0, 2.0]], [[1.0, 1.0]])
    assert_close(DSPOSDXL(beta=1 / 3)(at_ref).loss, torch.tensor(0.25), **tol)
