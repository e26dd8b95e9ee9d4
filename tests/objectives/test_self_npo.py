"""Self-NPO's pieces (METHODS §11.2): pseudo-Huber loss, truncated-diffusion target, renoising."""

import math

import torch
from torch.testing import assert_close

from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.objectives import SelfNPOLoss
from lightning_pref.objectives.self_npo import (
    pseudo_huber,
    renoise,
    sample_later_timesteps,
    self_npo_grid,
    truncated_diffusion_target,
)
from lightning_pref.types import DenoiseToTarget


def test_pseudo_huber_exact():
    """diff (3, 4), c = 1: mean(sqrt(9 + 1) - 1, sqrt(16 + 1) - 1) = (2.1622777 + 3.1231056) / 2
    = 2.6426917; c -> 0 tends to the mean |diff| = 3.5."""
    pred, target = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    expected = (math.sqrt(10) - 1 + math.sqrt(17) - 1) / 2
    assert_close(pseudo_huber(pred, target, 1.0), torch.tensor(expected), rtol=0, atol=1e-6)
    assert_close(pseudo_huber(pred, target, 1e-6), torch.tensor(3.5), rtol=0, atol=1e-5)
    # the objective on ā_s = 1: x̂0 = (x_s - sqrt(1 - 1)·ε̂) / 1 = x_s = (3, 4), whatever ε̂
    pair = to_target(pred.view(1, 1, 1, 2), target.view(1, 1, 1, 2), alpha=1.0)
    out = SelfNPOLoss(huber_c=1.0)(pair)
    assert_close(out.loss, torch.tensor(expected), rtol=0, atol=1e-6)
    assert_close(out.metrics["x0_mse"], torch.tensor(12.5))
    assert_close(SelfNPOLoss(huber_c=None)(pair).loss, torch.tensor(12.5))


def to_target(x_t, target_x0, alpha, pred=None, prediction_type="epsilon") -> DenoiseToTarget:
    """A DenoiseToTarget with one ā for every sample; ε̂ = ``pred`` (default 0.5 everywhere)."""
    n = x_t.shape[0]
    pred = torch.full_like(x_t, 0.5) if pred is None else pred
    alphas = torch.full((n, 1, 1, 1), alpha)
    return DenoiseToTarget(pred, x_t, alphas, prediction_type, target_x0, torch.zeros(n).long())


def test_objective_reads_x0_from_epsilon_and_v():
    """ā = 0.64 (α = 0.8, σ = 0.6), x_s = 1, output 0.5, target x̂0 = 0:
    ε: x̂0 = (1 - 0.6·0.5) / 0.8 = 0.875, L2 loss 0.765625;
    v: x̂0 = α·x_s - σ·v = 0.8 - 0.3 = 0.5, L2 loss 0.25."""
    x_t, target = torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    eps = SelfNPOLoss(huber_c=None)(to_target(x_t, target, 0.64))
    assert_close(eps.loss, torch.tensor(0.875**2), rtol=0, atol=1e-6)
    v = SelfNPOLoss(huber_c=None)(to_target(x_t, target, 0.64, prediction_type="v_prediction"))
    assert_close(v.loss, torch.tensor(0.25), rtol=0, atol=1e-6)


def test_grid_is_the_official_one():
    grid = self_npo_grid()
    assert grid[:3].tolist() == [39, 79, 119] and grid[-1].item() == 999 and len(grid) == 25


def _teacher(calls):
    """ε = mean of the embeddings: cond embeds are ones (e_c = 1), uncond zeros (e_u = 0)."""

    def teacher(x, t, embeds):
        calls.append(t.clone())
        return embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand_as(x).clone()

    return teacher


def test_truncated_target_with_a_constant_teacher():
    """With e_c = 1, e_u = 0 the guided ε = 1 + w (1 - 0) = 1 + w is constant; DDIM with a constant
    ε keeps x̂0 fixed: x̂0 = (x - sqrt(1-ā_t) ε)/sqrt(ā_t) at every step, and after K steps
    x_t' = sqrt(ā_t') x̂0 + sqrt(1 - ā_t') ε. Sample 0 starts at 999 -> t' = 999 - 5*40 = 799;
    sample 1 starts at 79 -> 39 -> 0, then stays at 0. Six teacher calls (K + 1) of 2B images."""
    a = torch.linspace(0.9999, 0.005, 1000)  # any decreasing ā
    x = torch.tensor([0.3, -1.2]).view(2, 1, 1, 1).expand(2, 4, 2, 2).contiguous()
    t = torch.tensor([999, 79])
    cond, uncond = torch.ones(2, 3, 5), torch.zeros(2, 3, 5)
    for w in (-1.0, -5.0):
        calls = []
        out = truncated_diffusion_target(_teacher(calls), a, "epsilon", x, t, cond, uncond, w)
        eps = 1.0 + w
        x0 = (x - (1 - a[t]).sqrt().view(2, 1, 1, 1) * eps) / a[t].sqrt().view(2, 1, 1, 1)
        assert out.timesteps.tolist() == [799, 0]
        assert_close(out.target, x0, rtol=1e-5, atol=1e-5)
        a_end = a[out.timesteps].view(2, 1, 1, 1)
        assert_close(out.x_t, a_end.sqrt() * x0 + (1 - a_end).sqrt() * eps, rtol=1e-5, atol=1e-5)
        assert len(calls) == 6 and all(c.shape == (4,) for c in calls)
        assert calls[1].tolist() == [959, 39, 959, 39]  # [t, t] for cond and uncond


def test_unconditional_teacher_ignores_the_prompt():
    """w = -1: ε = e_c - (e_c - e_u) = e_u; changing the cond embeddings changes nothing."""
    a = torch.linspace(0.9999, 0.005, 1000)
    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 300])
    uncond = torch.zeros(2, 3, 5)
    outs = [
        truncated_diffusion_target(_teacher([]), a, "epsilon", x, t, c, uncond, -1.0).target
        for c in (torch.ones(2, 3, 5), 7 * torch.ones(2, 3, 5))
    ]
    assert torch.equal(outs[0], outs[1])


def test_renoise_exact():
    """ā_t = 0.64 (α 0.8, σ 0.6), ā_s = 0.36 (α 0.6, σ 0.8), x_t = 1, z = 1:
    σ_s²/α_s² - σ_t²/α_t² = 0.64/0.36 - 0.36/0.64 = 1.7777778 - 0.5625 = 1.2152778
    x_s = 0.6 * (1/0.8 + sqrt(1.2152778)) = 0.6 * (1.25 + 1.1023964) = 1.4114378"""
    a = torch.tensor([0.64, 0.36])
    out = renoise(torch.ones(1, 1), torch.tensor([0]), torch.tensor([1]), a, torch.ones(1, 1))
    expected = 0.6 * (1.25 + math.sqrt(0.64 / 0.36 - 0.36 / 0.64))
    assert abs(expected - 1.4114378) < 1e-6
    assert_close(out, torch.tensor([[expected]]), rtol=0, atol=1e-6)


def test_renoise_has_the_forward_marginal():
    """x_t = α_t x0 + σ_t ε; renoised to s its std about α_s x0 is σ_s (20k draws, 2 %)."""
    a = torch.tensor([0.9, 0.2])
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    x_t = a[0].sqrt() * x0 + (1 - a[0]).sqrt() * torch.randn(20000, 1, generator=g)
    t, s = torch.zeros(20000, dtype=torch.long), torch.ones(20000, dtype=torch.long)
    x_s = renoise(x_t, t, s, a, torch.randn(20000, 1, generator=g))
    assert abs((x_s - a[1].sqrt() * 0.7).std().item() - (1 - a[1]).sqrt().item()) < 0.02 * 0.9
    assert abs((x_s - a[1].sqrt() * 0.7).mean().item()) < 0.02


def test_later_timesteps_cover_t_plus_one_to_the_end():
    t = torch.tensor([0, 799, 997, 999]).repeat(500)
    s = sample_later_timesteps(t, 1000, torch.Generator().manual_seed(0))
    assert (s > t).logical_or(t == 999).all() and (s <= 999).all()
    assert s[t == 997].unique().tolist() == [998, 999]
    assert s[t == 0].min() == 1 and s[t == 0].max() >= 990


# ---------------------------------------------------------------- the training module


def _module(tiny_policy, **kw):
    from lightning_pref.modules.self_npo import SelfNPOModule

    module = SelfNPOModule(tiny_policy, seed=0, **kw)
    module.configure_model()
    return module


def test_module_trains_the_student_and_the_teacher_follows(tiny_policy, image_pair_batch):
    """Two AdamW steps change most weights, the EMA teacher moves by (1 - d) of the gap, no
    frozen weight changes, and there is no reference model."""
    module = _module(tiny_policy, ema_decay=0.5)
    assert module.reference_unet is None and "objective" not in module.hparams
    before = {n: p.detach().clone() for n, p in module.policy.unet.named_parameters()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        out = module.shared_step(image_pair_batch, "train", step)
        assert out.loss > 0 and "x0_mse" in out.metrics
        teacher_before = [p.detach().clone() for p in module.teacher_unet.parameters()]
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        module.update_teacher()
        for tp, t0, sp in zip(
            module.teacher_unet.parameters(),
            teacher_before,
            module.policy.unet.parameters(),
            strict=True,
        ):
            assert_close(tp, 0.5 * t0 + 0.5 * sp.detach(), rtol=0, atol=1e-6)
    changed = [n for n, p in module.policy.unet.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 0.5 * len(before)
    assert all(not p.requires_grad for p in module.teacher_unet.parameters())


def test_module_checkpoint_keeps_the_teacher(tiny_policy, image_pair_batch):
    module = _module(tiny_policy)
    with torch.no_grad():
        for p in module.teacher_unet.parameters():
            p.add_(1.0)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    fresh = _module(TinyDiffusionPolicy(sample_size=8, seed=0))
    fresh.on_load_checkpoint(checkpoint)
    for a, b in zip(fresh.teacher_unet.parameters(), module.teacher_unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(k.startswith("teacher_unet") for k in checkpoint["state_dict"])


def test_module_steps_are_seeded(tiny_policy, image_pair_batch):
    module = _module(tiny_policy, images="winner")
    a = module.shared_step(image_pair_batch, "val", 0).loss
    b = module.shared_step(image_pair_batch, "val", 0).loss
    c = module.shared_step(image_pair_batch, "val", 1).loss
    assert torch.equal(a, b) and not torch.equal(a, c)
