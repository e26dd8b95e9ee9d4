"""Every objective in lightning_pref.objectives.__all__: exact values, direction, training."""

import inspect
import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref import objectives
from lightning_pref.modules import OfflinePairModule, SelfNPOModule, UnpairedModule
from lightning_pref.objectives import (
    SFT,
    DiffusionDPO,
    PairObjective,
    TargetObjective,
    UnpairedObjective,
)
from lightning_pref.types import DenoiseLabeled, DenoisePair, DenoiseToTarget


def _concrete(base: type) -> list[type]:
    return [
        getattr(objectives, name)
        for name in objectives.__all__
        if inspect.isclass(getattr(objectives, name))
        and issubclass(getattr(objectives, name), base)
        and not inspect.isabstract(getattr(objectives, name))
    ]


PAIR_OBJECTIVES = _concrete(PairObjective)
UNPAIRED_OBJECTIVES = _concrete(UnpairedObjective)
TARGET_OBJECTIVES = _concrete(TargetObjective)
OFFLINE_OBJECTIVES = PAIR_OBJECTIVES + UNPAIRED_OBJECTIVES + TARGET_OBJECTIVES


def make_labeled(pred, ref, labels, target=0.0) -> DenoiseLabeled:
    """Single images of shape [1, 1, k] from nested lists, with labels ±1."""
    pred_t = torch.as_tensor(pred, dtype=torch.float32).reshape(len(pred), 1, 1, -1)
    ref_t = torch.as_tensor(ref, dtype=torch.float32).reshape(len(ref), 1, 1, -1)
    n = pred_t.shape[0]
    return DenoiseLabeled(
        pred_t,
        torch.full_like(pred_t, target),
        ref_t,
        torch.as_tensor(labels, dtype=torch.float32),
        torch.zeros(n, dtype=torch.long),
    )


def make_pair(pred_w, pred_l, ref_w, ref_l, target=0.0, pref_prob=1.0) -> DenoisePair:
    def t(v):
        return torch.as_tensor(v, dtype=torch.float32).reshape(len(v), 1, 1, -1)

    pred_w, pred_l, ref_w, ref_l = map(t, (pred_w, pred_l, ref_w, ref_l))
    target_t = torch.full_like(pred_w, target)
    bsz = pred_w.shape[0]
    return DenoisePair(
        pred_w,
        pred_l,
        target_t,
        target_t.clone(),
        ref_w,
        ref_l,
        timesteps=torch.zeros(bsz, dtype=torch.long),
        pref_prob=torch.full((bsz,), pref_prob),
    )


def test_all_offline_objectives_found():
    names = {c.__name__ for c in OFFLINE_OBJECTIVES}
    expected = {"SFT", "DiffusionDPO", "SmPO", "InPO", "DSPO", "DSPOSDXL", "MaPO", "DiffusionKTO"}
    assert expected | {"SelfNPOLoss"} <= names  # Self-NPO gets the parametrised tests too


def test_dpo_exact_value():
    """One pair, target 0, each tensor [1, 1, 1, 2] so the MSE is the square of the entry:

    mse_w = 1, mse_l = 4       -> model_diff = -3
    ref_w = 4, ref_l = 1       -> ref_diff   = +3
    inside = -0.5 * beta * (-3 - 3) = 3 * beta; with beta = 1/3, inside = 1
    loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326169...
    """
    pair = make_pair([[1.0, 1.0]], [[2.0, 2.0]], [[2.0, 2.0]], [[1.0, 1.0]])
    out = DiffusionDPO(beta=1.0 / 3.0)(pair)
    assert_close(out.loss, torch.tensor(math.log1p(math.exp(-1.0))), rtol=0, atol=1e-6)
    assert out.metrics["implicit_acc"].item() == 1.0
    assert_close(out.metrics["model_mse_w"], torch.tensor(1.0))
    assert_close(out.metrics["model_mse_l"], torch.tensor(4.0))
    assert_close(out.metrics["ref_mse_w"], torch.tensor(4.0))
    assert_close(out.metrics["ref_mse_l"], torch.tensor(1.0))


def test_dpo_exact_value_batch_mean_outside_sigmoid():
    """Two pairs with inside = +1 and -2 (beta = 1, target 0, entries [1, 1, 1, 1]):

    pair 0: mse_w = 0, mse_l = 1, ref 0/-: model_diff = -1, ref_diff = 1 -> inside = -0.5*(-2) = 1
    pair 1: model mse_w = 4, mse_l = 0 (diff 4), ref diff 0            -> inside = -0.5*4   = -2
    loss = mean(log(1+e^-1), log(1+e^2)) = (0.3132617 + 2.1269280) / 2 = 1.2200948
    implicit_acc = 0.5. (logsigmoid of the batch mean, the diffusers#6702 bug, would give 0.9741.)
    """
    pair = make_pair(
        pred_w=[[0.0], [2.0]], pred_l=[[1.0], [0.0]], ref_w=[[1.0], [0.0]], ref_l=[[0.0], [0.0]]
    )
    out = DiffusionDPO(beta=1.0)(pair)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)
    assert out.metrics["implicit_acc"].item() == 0.5


def test_dpo_policy_equals_reference_is_log2():
    """inside = 0 for every pair, so loss = -log sigmoid(0) = log 2 whatever beta and the MSEs."""
    g = torch.Generator().manual_seed(1)
    pred_w, pred_l, target = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    pair = DenoisePair(
        pred_w,
        pred_l,
        target,
        target,
        pred_w.clone(),
        pred_l.clone(),
        torch.zeros(3, dtype=torch.long),
        torch.ones(3),
    )
    out = DiffusionDPO(beta=5000.0)(pair)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["implicit_acc"].item() == 0.0


def test_sft_exact_value():
    """SFT ignores loser and reference: pred_w entries (1, 3), target 0 -> mse = (1 + 9) / 2 = 5."""
    pair = make_pair([[1.0, 3.0]], [[100.0, 100.0]], [[7.0, 7.0]], [[7.0, 7.0]])
    out = SFT()(pair)
    assert out.loss.item() == 5.0
    assert not SFT.requires_reference


def test_dpo_needs_reference():
    pair = make_pair([[1.0]], [[1.0]], [[1.0]], [[1.0]])
    pair = DenoisePair(
        pair.pred_w,
        pair.pred_l,
        pair.target_w,
        pair.target_l,
        None,
        None,
        pair.timesteps,
        pair.pref_prob,
    )
    with pytest.raises(ValueError, match="reference"):
        DiffusionDPO()(pair)


@pytest.mark.parametrize("objective_cls", PAIR_OBJECTIVES, ids=lambda c: c.__name__)
def test_loss_falls_when_policy_favours_winner(objective_cls):
    """Reference predictions sit at distance 1 from the target; the policy halves the error of one
    image. Favouring the winner must give a lower loss than favouring the loser."""
    ref = [[1.0, -1.0], [0.5, -0.5]]
    closer = [[0.5, -0.5], [0.25, -0.25]]
    favour_w = make_pair(closer, ref, ref, ref)
    favour_l = make_pair(ref, closer, ref, ref)
    if getattr(objective_cls, "trains_negative", False):  # NPO trains towards the loser
        favour_w, favour_l = favour_l, favour_w
    objective = objective_cls()
    assert objective(favour_w).loss < objective(favour_l).loss


@pytest.mark.parametrize("objective_cls", UNPAIRED_OBJECTIVES, ids=lambda c: c.__name__)
def test_unpaired_loss_falls_when_policy_favours_desirable(objective_cls):
    """Two desirable and two undesirable images, reference at distance 1 from the target. A policy
    that halves the error of the desirable images must score better than one that halves the error
    of the undesirable ones."""
    ref = [[1.0, -1.0], [0.5, -0.5], [1.0, 1.0], [-0.5, 0.5]]
    half = [[v / 2 for v in row] for row in ref]
    labels = [1, 1, -1, -1]
    favour_d = make_labeled(half[:2] + ref[2:], ref, labels)
    favour_u = make_labeled(ref[:2] + half[2:], ref, labels)
    objective = objective_cls()
    assert objective(favour_d).loss < objective(favour_u).loss


@pytest.mark.parametrize("objective_cls", TARGET_OBJECTIVES, ids=lambda c: c.__name__)
def test_target_loss_falls_when_x0_moves_to_the_target(objective_cls):
    """ā = 0.64, x_s = 1, target x̂0 = 0: an ε̂ whose x̂0 = (1 - 0.6·ε̂) / 0.8 sits closer to the
    target (ε̂ = 1: x̂0 = 0.5) must score lower than one further away (ε̂ = 0: x̂0 = 1.25)."""
    x_t, target = torch.ones(2, 1, 1, 2), torch.zeros(2, 1, 1, 2)
    alphas, steps = torch.full((2, 1, 1, 1), 0.64), torch.zeros(2).long()
    near = DenoiseToTarget(torch.ones_like(x_t), x_t, alphas, "epsilon", target, steps)
    far = DenoiseToTarget(torch.zeros_like(x_t), x_t, alphas, "epsilon", target, steps)
    objective = objective_cls()
    assert objective(near).loss < objective(far).loss


@pytest.mark.parametrize("objective_cls", OFFLINE_OBJECTIVES, ids=lambda c: c.__name__)
def test_parameters_change_after_two_steps(objective_cls, tiny_policy, image_pair_batch):
    """Two AdamW steps through the module change most trainable weights and no frozen one (the
    objective's default noising runs too: DDIM/ReNoise inversion for InPO/SmPO)."""
    module_cls = OfflinePairModule
    if issubclass(objective_cls, UnpairedObjective):
        module_cls = UnpairedModule
    elif issubclass(objective_cls, TargetObjective):
        module_cls = SelfNPOModule
    module = module_cls(tiny_policy, objective_cls())
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        loss = module.shared_step(image_pair_batch, "train", step).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = [
        n
        for n, p in module.named_parameters()
        if p.requires_grad and not torch.equal(p.detach(), before[n])
    ]
    assert len(changed) > 0.5 * len(before)
    for n, p in module.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen[n]), f"frozen {n} changed"
