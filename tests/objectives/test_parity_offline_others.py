"""Parity (STYLE, Tests 4): one step of our module against the official scripts' operations.

Diffusion-KTO on :class:`UnpairedModule`; MaPO, DSPO (SD1.5 and SDXL forms), CaPO and the EXO-style
reverse KL on :class:`OfflinePairModule`. Each test runs one step of our module on the tiny float64
UNet with pinned x0, prompt embeddings, t and ε, then a reference step written here in plain torch
that follows the official code line by line (how x_t is built, which t the UNet is told, the
target, the reductions and scales, what is detached), and compares the loss and the policy's
gradient (:func:`tests.objectives.parity.assert_parity`).

Official code read (``git show HEAD:<file>``):

- jacklishufan/diffusion-kto @ 226bbd0, ``train_kto_sd_v1.5.py``
- mapo-t2i/mapo @ 374b3d3, ``train.py``, ``utils.py``, ``args.py``
- huaishengzhu/DSPO @ 8b4e09b, ``train.py``
- MinkaiXu/fPO @ 1a35615, ``src/align_stage/loss.py`` (EXO; an LLM loss, ported by us)

The official ``.float()`` casts are left out: everything here is float64 already. ``t`` and ε are
pinned as 2B draws, as the pair scripts draw them per image and then keep the first half.
"""

import pytest
import torch
import torch.nn.functional as F

from lightning_pref.modules import OfflinePairModule, UnpairedModule
from lightning_pref.objectives import DSPO, DSPOSDXL, CaPO, DiffusionEXO, DiffusionKTO, MaPO
from lightning_pref.types import ImageLabelBatch, PairBatch
from tests.objectives.parity import assert_parity, double_policy, perturb, pin_draws, trainable_grad

B = 2  # pairs
SHAPE = (4, 8, 8)  # latent C, h, w of the tiny UNet
F64 = torch.float64


def _randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64)


def _pair_inputs(delta=None, seed=0):
    """x0_w, x0_l [B, C, h, w] (x0_l = x0_w + delta·randn if delta), embeds, 2B t, 2B ε."""
    g = torch.Generator().manual_seed(seed)
    x_w = _randn(g, B, *SHAPE)
    x_l = _randn(g, B, *SHAPE) if delta is None else x_w + delta * _randn(g, B, *SHAPE)
    embeds = _randn(g, B, 6, 16)
    timesteps = torch.tensor([120, 640, 870, 310])
    noise = _randn(g, 2 * B, *SHAPE)
    return x_w, x_l, embeds, timesteps, noise


def _our_pair_step(monkeypatch, objective, scale, delta=None, pref_prob=(1.0, 1.0)):
    """One step of OfflinePairModule: (module, loss, policy grad, inputs)."""
    module = OfflinePairModule(double_policy(), objective, reference="copy")
    module.configure_model()
    perturb(module.policy.unet, scale=scale)
    x_w, x_l, embeds, t, noise = inputs = _pair_inputs(delta)
    pin_draws(monkeypatch, module, t, noise)
    pairs = PairBatch(x_w, x_l, embeds, torch.tensor(pref_prob, dtype=F64))
    out = module.objective(module.denoise_pair(pairs, torch.Generator().manual_seed(0)))
    out.loss.backward()
    grad = trainable_grad(module.policy.unet)
    module.policy.unet.zero_grad(set_to_none=True)
    return module, out.loss.detach(), grad, inputs


def _official_pair_forward(module, x_w, x_l, embeds, t, noise, reference=True):
    """The pair scripts' noising and forward passes (DSPO train.py:1048-1076, 1118-1133,
    1149-1154; MaPO train.py:379-431 is the same without a reference).

    latents = [w; l]; t and ε drawn for all 2B images, then ``chunk(2)[0].repeat(2)`` (MaPO draws
    B t and repeats them: the same values): one t and one ε per pair; x_t =
    DDPMScheduler.add_noise; the UNet is told that same t with the caption embedding repeated;
    target = ε (epsilon models). The reference runs under no_grad.
    """
    latents = torch.cat([x_w, x_l])
    t = t.chunk(2)[0].repeat(2)
    noise = noise.chunk(2)[0].repeat(2, 1, 1, 1)
    x_t = module.policy.noise_scheduler.add_noise(latents, noise, t)
    embeds = embeds.repeat(2, 1, 1)
    model_pred = module.policy.unet(x_t, t, encoder_hidden_states=embeds).sample
    ref_pred = None
    if reference:
        with torch.no_grad():
            ref_pred = module.reference_unet(x_t, t, encoder_hidden_states=embeds).sample
    return model_pred, ref_pred, noise, t


def _reference_grad(module, loss):
    loss.backward()
    return trainable_grad(module.policy.unet)


# ---------------------------------------------------------------------------- Diffusion-KTO
KTO_T = torch.tensor([50, 300, 600, 900])
KTO_LABELS = torch.tensor([1.0, 1.0, -1.0, 1.0])  # 3 of 4 desirable, as the 80%-positive sampler


@pytest.mark.parametrize(
    ("case", "scale"),
    [("reference_point_active", -5e-4), ("reference_point_clamped", 5e-4)],
    ids=["reference_point_active", "reference_point_clamped"],
)
def test_kto_parity(monkeypatch, case, scale):
    """diffusion-kto ``train_kto_sd_v1.5.py`` @ 226bbd0, ``--loss kto --halo sigmoid`` with the
    default ``--bce_offset none``:

    - 1321, 1331-1337: one ε and one t per image (no pairs); 1342: x_t = add_noise(x0, ε, t);
    - 1371-1375: the UNet is told that t; 1385-1386: target = ε;
    - 1395-1399: per-image MSE averaged over C, h, w; 1420-1433: reference MSE under no_grad;
    - 1451-1453: g = -mse_θ - (-mse_ref);
    - 1459, 1469-1471: kl = mean(g) over the batch, detached, reduced (mean) over GPUs, clamped
      at 0, detached; 1472: g - kl;
    - 1456-1458: labels are 0/1, sign = 2·label - 1; 1473-1475: h = sigmoid(sign·β·(g - kl));
    - 1488-1492: l = (λ_d·[label = 1] + λ_u·[label = 0])·(1 - h); 1508-1509: loss = mean(l).

    β = 1000 is the official ``--beta_dpo`` default (387-391). ``--lambda_u_kto`` is set to 2
    (default 1) so that swapping λ_d and λ_u shows. Two cases: the policy is moved so that
    mean(g) > 0 (the reference point is subtracted; its detach matters) or mean(g) < 0 (the
    clamp sets it to 0). One process, so the all-GPU mean is the batch mean.

    Our module starts from pixels and captions (``denoise_labeled``); the test pins
    ``policy.encode_images`` / ``policy.encode_prompt`` to return the fixed latents and
    embeddings, which changes nothing in the module and needs no new batch type.
    """
    n = len(KTO_LABELS)
    g = torch.Generator().manual_seed(3)
    latents, embeds, noise = _randn(g, n, *SHAPE), _randn(g, n, 6, 16), _randn(g, n, *SHAPE)

    module = UnpairedModule(double_policy(), DiffusionKTO(lambda_undesirable=2.0), reference="copy")
    module.configure_model()
    policy = module.policy
    perturb(policy.unet, scale=scale)
    pin_draws(monkeypatch, module, KTO_T, noise)

    def encode_images(pixels, generator=None):
        assert pixels.shape[0] == n
        return latents.clone()

    def encode_prompt(captions):
        assert len(captions) == n
        return embeds.clone()

    monkeypatch.setattr(policy, "encode_images", encode_images)
    monkeypatch.setattr(policy, "encode_prompt", encode_prompt)
    batch = ImageLabelBatch(torch.zeros(n, 3, 16, 16), ["a", "b", "c", "d"], KTO_LABELS.clone())
    out = module.objective(module.denoise_labeled(batch, torch.Generator().manual_seed(0)))
    out.loss.backward()
    grad = trainable_grad(policy.unet)
    policy.unet.zero_grad(set_to_none=True)

    # reference step, in the official order
    labels = (KTO_LABELS > 0).to(F64)  # the official 0/1 labels
    noisy_model_input = policy.noise_scheduler.add_noise(latents, noise, KTO_T)
    model_pred = policy.unet(noisy_model_input.detach(), KTO_T, embeds).sample
    target = noise
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    with torch.no_grad():
        ref_preds = module.reference_unet(noisy_model_input, KTO_T, embeds).sample
        ref_loss = (ref_preds - target).pow(2).mean(dim=[1, 2, 3])
    g_term = -model_losses - (-ref_loss)
    label_sgn = 2 * labels - 1
    labels_binary = labels == 1
    kl_gpu = g_term.mean().detach()
    kl = kl_gpu.clamp(min=0).detach()  # accelerator.reduce(mean) over one process: itself
    assert (kl_gpu > 0) == (case == "reference_point_active"), float(kl_gpu)
    g_term = g_term - kl
    h = torch.sigmoid(label_sgn * 1000.0 * g_term)
    w_y = 1.0 * labels_binary.to(F64) + 2.0 * (~labels_binary).to(F64)
    ref_loss_value = (w_y * (1 - h)).mean()
    assert_parity(
        out.loss.detach(), ref_loss_value.detach(), grad, _reference_grad(module, ref_loss_value)
    )


# ---------------------------------------------------------------------------- MaPO
def test_mapo_parity(monkeypatch):
    """mapo ``train.py`` + ``utils.py::compute_loss`` @ 374b3d3 (SDXL script; the UNet here is
    the SD-shaped tiny one, so the size ids are not part of this test):

    - train.py 379-402: latents [w; l]; ε = randn(2B).chunk(2)[0].repeat(2) and
      t = randint(B).repeat(2): shared by w and l; x_t = add_noise;
    - 416-424: the UNet is told that t, caption repeated; 427-429: target = ε;
    - utils.py 287-289: per-image MSE over C, h, w, split into m_w, m_l;
    - 290-292: lo = s·m_w/(exp(s·m_w) - 1) - s·m_l/(exp(s·m_l) - 1), s = ``snr_value`` = 0.5
      (args.py 170);
    - 296-297: ratio = β·logsigmoid(lo·num_train_timesteps), β = ``beta_mapo`` = 0.1 (args.py 158);
    - 300: loss = mean(m_w) - mean(ratio). Reference-free: no reference pass.

    MaPO() is built with its defaults, so they are checked against the official ones. x0_l is
    x0_w plus small noise so that 1000·lo stays where logsigmoid has a slope.
    """
    module, loss, grad, inputs = _our_pair_step(monkeypatch, MaPO(), scale=0.0, delta=0.05)
    assert module.reference_unet is None
    model_pred, _, target, _ = _official_pair_forward(module, *inputs, reference=False)
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    snr_value, beta_mapo = 0.5, 0.1
    log_odds = (snr_value * model_losses_w) / (torch.exp(snr_value * model_losses_w) - 1) - (
        snr_value * model_losses_l
    ) / (torch.exp(snr_value * model_losses_l) - 1)
    num_train_timesteps = module.policy.noise_scheduler.config.num_train_timesteps
    assert num_train_timesteps == 1000
    assert (
        0.05 < float((log_odds * num_train_timesteps).detach().abs().max()) < 5
    )  # logsigmoid not flat
    ratio_losses = beta_mapo * F.logsigmoid(log_odds * num_train_timesteps)
    ref_loss = model_losses_w.mean() - ratio_losses.mean()
    assert_parity(loss, ref_loss.detach(), grad, _reference_grad(module, ref_loss))


# ---------------------------------------------------------------------------- DSPO
@pytest.mark.parametrize(
    ("form", "beta", "scale", "delta", "far"),
    [
        ("sd15", 0.05, 0.02, None, None),
        ("sdxl", 1000.0, 1e-3, None, False),  # mean(d²) < 0.1: loss = mean(w²)
        ("sdxl", 1000.0, 0.04, 0.02, True),  # mean(d²) >= 0.1: loss = mean((w·d)²)
    ],
    ids=["sd15", "sdxl-near", "sdxl-far"],
)
def test_dspo_parity(monkeypatch, form, beta, scale, delta, far):
    """DSPO ``train.py`` @ 8b4e09b, ``--train_method dspo``:

    - 1048, 1060-1071: ε and t drawn for 2B images, then ``chunk(2)[0].repeat(2)``: shared;
      1076: x_t = add_noise; 1118: caption repeated; 1122: target = ε; 1127-1133: UNet told t;
    - 1141-1143: model_diff_w = (ε_θ - ε)_w; per-image MSE over C, h, w; 1147: model_diff;
    - 1149-1155: reference MSEs under no_grad (ref_pred detached);
    - 1159-1160: inside = -0.5·β·(model_diff - ref_diff); 1162: d = (ε_θ - ε_ref)_w;
    - SDXL (1163-1167): if mean over the batch of mean(d²) >= 0.1: mean((1 - σ(inside))·d)²,
      else mean((1 - σ(inside))²), each ``.mean(dim=[1,2,3]).mean()``;
    - SD1.5 (1168-1169): mean((model_diff_w - β·(1 - σ(inside))·d)²).

    Gradients flow through inside and through ε_θ in d. β: SD1.5 0.05, the top of the README's
    grid (at 0.001 the β² term through σ(inside) sits below the gradient tolerance); SDXL 1000,
    the bottom of its grid (launchers/sdxl.sh uses 5000). The SDXL cases move the policy a
    little (near branch) or a lot with x0_l close to x0_w (far branch, σ(inside) not saturated);
    in the far case the pairs' mean(d²) straddle 0.1 (0.095, 0.108; batch mean 0.1015), so a
    switch per pair instead of on the batch mean would fail.
    """
    objective = DSPO(beta=beta) if form == "sd15" else DSPOSDXL(beta=beta)
    module, loss, grad, inputs = _our_pair_step(monkeypatch, objective, scale, delta)
    model_pred, ref_pred, target, _ = _official_pair_forward(module, *inputs)
    model_diff_w, model_diff_l = (model_pred - target).chunk(2)
    model_losses_w = model_diff_w.pow(2).mean(dim=[1, 2, 3])
    model_losses_l = model_diff_l.pow(2).mean(dim=[1, 2, 3])
    model_diff = model_losses_w - model_losses_l
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    ref_losses_w, ref_losses_l = ref_losses.chunk(2)
    ref_diff = ref_losses_w - ref_losses_l
    inside_term = -0.5 * beta * (model_diff - ref_diff)
    assert float(inside_term.detach().abs().max()) < 5  # sigmoid not saturated
    pred2, _ = (model_pred - ref_pred).chunk(2)
    weight = (1 - torch.sigmoid(inside_term))[:, None, None, None]
    if form == "sdxl":
        per_pair = pred2.detach().pow(2).mean(dim=[1, 2, 3])
        is_far = bool(pred2.pow(2).mean(dim=[1, 2, 3]).mean() >= 0.1)
        assert is_far == far, per_pair.tolist()
        assert not far or per_pair.min() < 0.1, per_pair.tolist()  # a per-pair switch would differ
        if is_far:
            ref_loss = (weight * pred2).pow(2).mean(dim=[1, 2, 3]).mean()
        else:
            ref_loss = weight.pow(2).mean(dim=[1, 2, 3]).mean()
    else:
        ref_loss = (model_diff_w - beta * weight * pred2).pow(2).mean(dim=[1, 2, 3]).mean()
    assert_parity(loss, ref_loss.detach(), grad, _reference_grad(module, ref_loss))


# ---------------------------------------------------------------------------- CaPO
def test_capo_parity(monkeypatch):
    """CaPO has no public code (METHODS §11.4): this follows the paper's equations as METHODS
    gives them, on the Diffusion-DPO noising above (one t and one ε per pair, MSE over C, h, w):

        Δ = R_ca(x⁺) - R_ca(x⁻),   loss = mean((Δ - β·(R_θ(x⁺_t) - R_θ(x⁻_t)))²)
        R_θ(x) = -w_t·(mse_θ(x) - mse_ref(x)),  w_t = σ(b - λ_t),  λ_t = log(ā_t / (1 - ā_t))
        b = 1.5

    Our choices, as CaPO's docstring names them: β carries Diffusion-DPO's 0.5 (β·Δ_R becomes
    0.5·β·Δ_R) with β = 5000; w_t multiplies the implicit reward, not the squared residual; Δ
    travels as ``pref_prob = (1 + Δ) / 2``; ā is the policy's own schedule. The objective is
    built on another schedule (linear 1e-4 → 0.02) so that only ``configure_model`` binding the
    policy's ā (scaled-linear) makes the test pass. Soft labels 0.9 and 0.7 give Δ = 0.8, 0.4.
    """
    objective = CaPO(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    pref_prob = (0.9, 0.7)
    module, loss, grad, inputs = _our_pair_step(monkeypatch, objective, 4e-4, pref_prob=pref_prob)
    model_pred, ref_pred, target, t = _official_pair_forward(module, *inputs)
    mse = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    ref_mse = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    a = module.policy.noise_scheduler.alphas_cumprod.to(F64)[t]
    w_t = torch.sigmoid(1.5 - torch.log(a / (1 - a)))
    reward = -w_t * (mse - ref_mse)
    reward_w, reward_l = reward.chunk(2)
    implicit_gap = 0.5 * 5000.0 * (reward_w - reward_l)
    assert 0.05 < float(implicit_gap.detach().abs().max()) < 5
    calibrated_gap = 2 * torch.tensor(pref_prob, dtype=F64) - 1
    ref_loss = (calibrated_gap - implicit_gap).pow(2).mean()
    assert_parity(loss, ref_loss.detach(), grad, _reference_grad(module, ref_loss))


# ---------------------------------------------------------------------------- EXO-style reverse KL
def test_exo_parity(monkeypatch):
    """EXO's ``exact_loss`` with ``loss_type="pref"`` (fPO ``src/align_stage/loss.py`` @ 1a35615),
    ported to diffusion; no public diffusion code exists (METHODS §11.3), so the reward is ours:

    - 71: log_epsilon = -10; 86: reward = β_model·(log π_θ(y) - log π_ref(y)); here, our port,
      h = -0.5·β·(mse_θ - mse_ref) per image with β = 5000 (the Diffusion-DPO convention);
    - 91-93: the batch is split into groups of N = 2 (winner, loser);
    - 98-104 ("pref"): the preferred response's label is 0, the other's log_epsilon;
    - 108: log p_θ = log_softmax over the group; 110: KL(p_θ ‖ p_tgt) = Σ p_θ·(log p_θ - label);
    - 113: the sum over groups divided by their count.

    The noising and forward passes are the Diffusion-DPO ones above; hard labels (pref_prob = 1).
    """
    module, loss, grad, inputs = _our_pair_step(monkeypatch, DiffusionEXO(), scale=4e-4)
    model_pred, ref_pred, target, _ = _official_pair_forward(module, *inputs)
    mse = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    ref_mse = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
    rewards = -0.5 * 5000.0 * (mse - ref_mse)
    rewards_w, rewards_l = rewards.chunk(2)
    assert 0.05 < float((rewards_w - rewards_l).detach().abs().max()) < 5
    log_epsilon = -10.0
    total, count = 0.0, 0
    for i in range(B):
        group = torch.stack([rewards_w[i], rewards_l[i]])  # [N = 2], winner first
        energy_labels = torch.tensor([0.0, log_epsilon], dtype=F64)
        log_draw = group.log_softmax(0)
        total = total + (log_draw.exp() * (log_draw - energy_labels)).sum(0)
        count += 1
    ref_loss = total / count
    assert_parity(loss, ref_loss.detach(), grad, _reference_grad(module, ref_loss))
