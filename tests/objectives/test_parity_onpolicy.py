"""Parity: one training step of the on-policy modules vs the official scripts' order of operations.

SPO and TailorPO train through :class:`StepPoolModule` on a step pool; Self-NPO through
:class:`SelfNPOModule`. Each test runs one step of our module on a tiny float64 UNet (policy moved
away from its frozen reference / EMA teacher by :func:`perturb`), and a reference step written
here in plain torch, transcribed from the official code (read, not copied), in its order of
operations. Loss to 1e-6 relative, the policy's gradient to 1e-5 (:func:`assert_parity`).

SPO's entry point is ``module.objective(module.step_pair(pool.select(index)))`` plus backward:
the exact line :meth:`StepPoolModule.training_step` runs for each optimizer step of a round. The
rest of ``training_step`` is data (pool generation, no grad), scheduling (which rows form a chunk)
and the optimizer step, none of which touches the loss or the gradient of one chunk; running it
would need a Trainer and would step the weights before the gradient can be read.

Self-NPO's entry point is one ``shared_step`` plus backward; its random draws go through the
module's hooks (``sample_timesteps``, ``sample_noise``, ``sample_student_timesteps``), pinned here.
The VAE posterior sample is the generator's first draw in both the module and the official script,
so the reference draws it from an identically seeded generator (``module.step_generator``).
Prompt embeddings come from the policy's frozen text encoder on both sides (the official scripts
store ``text_encoder(ids)[0]``; our batches carry captions and the module encodes them).
"""

import math

import torch
from torch import Tensor

from lightning_pref.data import StepPool, StepPoolSampler
from lightning_pref.modules import SelfNPOModule, StepPoolModule
from lightning_pref.objectives import SPO, TailorPO
from lightning_pref.scoring.base import Scorer
from lightning_pref.types import ImagePairBatch, StepPoolBatch
from tests.objectives.parity import (
    assert_parity,
    double_policy,
    perturb,
    pin_draws,
    trainable_grad,
)

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a small star"]

# SPO, configs/basic_config.py:65-103 (SD1.5 experiment config keeps them)
SPO_NUM_STEPS, SPO_ETA, SPO_CFG, SPO_BETA, SPO_EPS = 20, 1.0, 5.0, 10.0, 0.1
# Self-NPO, Self-NPO/train.py: w = -1 (:1010), K = 5 (:1012-1047), 25 DDIM steps (:620-623),
# huber_c = 0.001 (:535-538; train.sh passes --loss_type="huber")
NPO_W, NPO_K, NPO_GRID, NPO_HUBER_C = -1.0, 5, 25, 0.001


class _Unused(Scorer):
    """The pool's scorer; never called (the step pool batch is given)."""

    def forward(self, images, captions, timesteps=None):
        raise AssertionError("the parity step must not score")


def _seeded(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _schedule(module) -> Tensor:
    """ā of the policy's training scheduler (the official scripts read their scheduler's)."""
    return module.policy.noise_scheduler.alphas_cumprod.to(torch.float64)


def _sd_unet(unet, x: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
    return unet(x, t, encoder_hidden_states=embeds).sample


# ---------------------------------------------------------------------- SPO / TailorPO
def make_step_module(objective) -> StepPoolModule:
    """Tiny float64 StepPoolModule with SPO's pool settings (CFG 5, η = 1, 20 steps)."""
    pool = StepPoolSampler(
        _Unused(), num_candidates=2, num_steps=SPO_NUM_STEPS, guidance_scale=SPO_CFG, eta=SPO_ETA
    )
    module = StepPoolModule(double_policy(), objective, pool, train_batch_size=len(CAPTIONS))
    module.configure_model()  # full fine-tuning: the reference is a frozen deep copy
    perturb(module.policy.unet, scale=0.04)
    return module


def official_ddim_logprob(a: Tensor, out: Tensor, t: Tensor, x_t: Tensor, x_prev: Tensor) -> Tensor:
    """``ddim_step_with_logprob`` (spo/custom_diffusers/ddim_with_logprob.py:52-127), ε-model.

    prev_t = t - T/steps clamped to [0, T-1] (:53-55; SD's final ā is ā_0, so the clamp is the
    last step's ā); x̂0 (:70); σ = η·sqrt((1-ā_prev)/(1-ā_t)·(1-ā_t/ā_prev)) (:94-95, :13-23);
    μ = sqrt(ā_prev)·x̂0 + sqrt(1-ā_prev-σ²)·ε (:103-106); the Gaussian log-density of the
    detached x_prev, MEAN over all but the batch dimension (:121-127).
    """
    view = (-1, 1, 1, 1)
    prev_t = torch.clamp(t - 1000 // SPO_NUM_STEPS, 0, 999)
    a_t, a_prev = a.gather(0, t).view(view), a.gather(0, prev_t).view(view)
    x0 = (x_t - (1 - a_t) ** 0.5 * out) / a_t**0.5
    variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
    std = SPO_ETA * variance**0.5
    mean = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * out
    two_pi = torch.as_tensor(2 * math.pi, dtype=torch.float64)
    log_prob = -((x_prev.detach() - mean) ** 2) / (2 * std**2) - torch.log(std)
    log_prob = log_prob - torch.log(torch.sqrt(two_pi))
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def official_spo_step(module, b: StepPoolBatch, beta: float, eps: float | None) -> Tensor:
    """train_spo.py:472-602 with ``train.cfg=True`` (sample_0 = winner, sample_1 = loser).

    Negative-prompt embeddings of "" repeated (:270-279, :474-481), concatenated [neg; text];
    for each of winner and loser, one policy forward and one reference forward on [x_t; x_t],
    chunked into (uncond, text) and combined as ``uncond + scale·(text − uncond)`` (:488-526); four
    ``ddim_step_with_logprob`` calls (:551-582); ratios clamped to [1-ε, 1+ε] (:584-585);
    ``-log σ(β·log r_w − β·log r_l)``, mean (:586). ``eps=None`` drops the clamp (TailorPO).
    """
    policy, a = module.policy, _schedule(module)
    prompt_embeds = policy.encode_prompt(b.captions)
    neg = policy.encode_prompt([""]).repeat(len(b.captions), 1, 1)
    embeds = torch.cat([neg, prompt_embeds])  # embeds_0 == embeds_1: one prompt per pair

    def cfg(unet: torch.nn.Module) -> Tensor:
        pred = _sd_unet(unet, torch.cat([b.x_t] * 2), torch.cat([b.timesteps] * 2), embeds)
        uncond, text = pred.chunk(2)
        return uncond + SPO_CFG * (text - uncond)

    noise_pred_0, noise_ref_pred_0 = cfg(policy.unet), cfg(module.reference_unet)
    noise_pred_1, noise_ref_pred_1 = cfg(policy.unet), cfg(module.reference_unet)
    prob_0 = official_ddim_logprob(a, noise_pred_0, b.timesteps, b.x_t, b.x_w)
    ref_prob_0 = official_ddim_logprob(a, noise_ref_pred_0, b.timesteps, b.x_t, b.x_w)
    prob_1 = official_ddim_logprob(a, noise_pred_1, b.timesteps, b.x_t, b.x_l)
    ref_prob_1 = official_ddim_logprob(a, noise_ref_pred_1, b.timesteps, b.x_t, b.x_l)
    ratio_0, ratio_1 = torch.exp(prob_0 - ref_prob_0), torch.exp(prob_1 - ref_prob_1)
    if eps is not None:
        ratio_0 = torch.clamp(ratio_0, 1 - eps, 1 + eps)
        ratio_1 = torch.clamp(ratio_1, 1 - eps, 1 + eps)
    return -torch.log(torch.sigmoid(beta * torch.log(ratio_0) - beta * torch.log(ratio_1))).mean()


def _posterior(module, denoiser, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, σ) of the DDIM η=1 step t → t-50 under ``denoiser`` with CFG (to draw fixed inputs)."""
    a, view = _schedule(module), (-1, 1, 1, 1)
    with torch.no_grad():
        cond = module.policy.encode_prompt(CAPTIONS)
        uncond = module.policy.encode_prompt([""] * len(CAPTIONS))
        out = module.pool.predict(denoiser, x_t, t, cond, uncond)
    a_t, a_prev = a[t].view(view), a[(t - 50).clamp(min=0)].view(view)
    x0 = (x_t - (1 - a_t).sqrt() * out) / a_t.sqrt()
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * out, std


def step_pool(module) -> tuple[StepPool, Tensor]:
    """A fixed pool of 4 pairs at t = 751, 501, 251, 1 (the last one steps to ā_0).

    x_w is drawn from the policy's posterior and x_l from the reference's, so the log-ratios are
    of realistic size and of both signs: some inside [0.9, 1.1] and some clamped.
    """
    t = torch.tensor([751, 501, 251, 1])
    x_t = _seeded(4, 4, 8, 8, seed=10)
    mean_w, std = _posterior(module, module.policy, x_t, t)
    mean_l, _ = _posterior(module, module.reference_predict, x_t, t)
    x_w = mean_w + std * _seeded(4, 4, 8, 8, seed=11)
    x_l = mean_l + std * _seeded(4, 4, 8, 8, seed=12)
    batch = StepPoolBatch(x_t, x_w, x_l, t, t - 50, list(CAPTIONS))
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pool = StepPool(batch, scores, scores - 1, torch.ones(4, dtype=torch.bool), scores, 1.0)
    return pool, torch.tensor([2, 0, 3, 1])  # a chunk of the round in shuffled order


def _run_step_parity(objective, beta: float, eps: float | None) -> dict[str, Tensor]:
    module = make_step_module(objective)
    pool, index = step_pool(module)
    batch = pool.select(index)  # official: sample[key] = value[valid_perm] (train_spo.py:440)
    ref_loss = official_spo_step(module, batch, beta, eps)
    ref_loss.backward()
    ref_grad = trainable_grad(module.policy.unet)
    module.policy.unet.zero_grad(set_to_none=True)

    out = module.objective(module.step_pair(pool.select(index)))  # as training_step
    out.loss.backward()
    assert_parity(out.loss, ref_loss.detach(), trainable_grad(module.policy.unet), ref_grad)
    return out.metrics


def test_spo_step_matches_official_train_spo():
    """One SPO step of StepPoolModule == RockeyCoss/SPO train_scripts/train_spo.py:472-602 with
    spo/custom_diffusers/ddim_with_logprob.py:52-127 (CFG 5 with the "" branch, DDIM η=1, log-prob
    mean over C,H,W, ratio clamp [0.9, 1.1], β=10). Some ratios are clamped and some are not, so
    both the clamp and the gradient of the unclamped pairs are checked."""
    metrics = _run_step_parity(SPO(), SPO_BETA, SPO_EPS)
    assert 0 < metrics["clip_frac"].item() < 1, "need clamped and unclamped pairs"


def test_tailorpo_step_matches_the_reconstruction():
    """TailorPO has no public code: the reference follows METHODS §3 and the
    lightning_pref/objectives/tailorpo.py docstring: SPO's training step (the same train_spo.py:
    472-602 order, same step-pool batch, CFG 5, DDIM η=1, mean log-prob) with the DPO loss on the
    transition log-ratios and no ratio clamp (β = 10)."""
    metrics = _run_step_parity(TailorPO(), SPO_BETA, None)
    assert "clip_frac" not in metrics  # no clamp


# ---------------------------------------------------------------------- Self-NPO
# start grid indices per image (N = 2B: winners then losers). 0 reaches t = 0 on its first step,
# 3 on its fourth (then sits at t = 0), 7 and 24 take all five steps; an index >= 5 keeps the
# official loop from breaking early (train.py:1071, a documented departure we do not copy).
NPO_INDEX = torch.tensor([7, 0, 24, 3])
NPO_FINAL_T = [119, 0, 799, 0]  # t' after K = 5 steps of 40
NPO_S = torch.tensor([512, 1, 950, 300])  # s in [t'+1, 999]


def make_npo_module(**kwargs) -> SelfNPOModule:
    """Tiny float64 SelfNPOModule (official w, K, grid and Huber c), trained on both images."""
    module = SelfNPOModule(double_policy(), **kwargs)
    module.configure_model()  # the teacher: a frozen copy of the UNet
    perturb(module.policy.unet, scale=0.02)  # the student moves away from the EMA teacher
    return module


def npo_batch() -> ImagePairBatch:
    g = torch.Generator().manual_seed(20)
    pixels = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    return ImagePairBatch(pixels[:2], pixels[2:], CAPTIONS[:2], torch.ones(2))


def pin_npo_draws(monkeypatch, module, noise: Tensor, z: Tensor) -> None:
    """Pin the grid timesteps, the forward noise, s and z the module draws in ``shared_step``."""
    grid = torch.arange(1, NPO_GRID + 1) * (1000 // NPO_GRID) - 1
    pin_draws(monkeypatch, module, grid[NPO_INDEX], None)
    draws = [noise, z]  # two different draws (pin_draws' noise would repeat one)

    def fixed_noise(shape, generator, dtype) -> Tensor:
        assert tuple(shape) == tuple(draws[0].shape), shape
        return draws.pop(0).to(dtype)

    monkeypatch.setattr(module, "sample_noise", fixed_noise)

    def student_timesteps(timesteps: Tensor, generator) -> Tensor:
        assert timesteps.tolist() == NPO_FINAL_T, timesteps  # the teacher's end points
        return NPO_S.clone()

    monkeypatch.setattr(module, "sample_student_timesteps", student_timesteps)


def official_self_npo_step(module, batch: ImagePairBatch, noise: Tensor, z: Tensor) -> Tensor:
    """G-U-N/Diffusion-NPO Self-NPO/train.py:965-1148 (SD1.5, ε-model, --loss_type huber).

    VAE posterior sample × scaling factor (:974-981); grid ``(arange(1, 26)·40).round() - 1``
    (DDIMSolver, :58-72) at a random index (:988-997); forward noise (:999-1001). No grad, six
    teacher evaluations (:1008-1075): separate cond and "" forwards, x̂0 of each (predicted_origin,
    :237-249), ``x̂0 = x̂0_c + w(x̂0_c - x̂0_u)``; the sixth stops there (:1046-1047); otherwise
    ``ε = e_c + w(e_c - e_u)`` and the DDIM (η=0) step with ``ā_prev`` of the grid index, masked
    once the index went below 0 (DDIMSolver.ddim_step :82-88, :1048-1070). s = t' + U{1..999-t'}
    (:1088-1101); ``x_s = (x_t'/α_t' + sqrt(nsr_s² - nsr_t'²)·z)·α_s``, renoising the teacher's
    x_t' (:1077-1124); the student's x̂0 from ``unet(x_s, s, text)`` (:1126-1135); pseudo-Huber
    mean (:1142-1148).
    """
    policy, teacher, a = module.policy, module.teacher_unet, _schedule(module)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()  # alpha_schedule, sigma_schedule (:769-772)

    def ext(values: Tensor, t: Tensor) -> Tensor:  # extract_into_tensor (:252-255)
        return values.gather(-1, t).reshape(t.shape[0], 1, 1, 1)

    def origin(out: Tensor, t: Tensor, x: Tensor) -> Tensor:  # predicted_origin, ε (:237-241)
        return (x - ext(sigma, t) * out) / ext(alpha, t)

    ddim_timesteps = (torch.arange(1, NPO_GRID + 1) * (1000 // NPO_GRID)).round().long() - 1
    alpha_prev = torch.cat([a[:1], a[ddim_timesteps[:-1]]])  # ddim_alpha_cumprods_prev (:66-68)
    pixels = torch.cat([batch.pixels_w, batch.pixels_l])
    captions = list(batch.captions) * 2
    vae_generator = module.step_generator("train", 0)  # the first draw, as in the module
    latents = policy.vae.encode(pixels).latent_dist.sample(generator=vae_generator)
    latents = latents * policy.vae.config.scaling_factor
    prompt_embeds = policy.encode_prompt(captions)
    uncond_prompt_embeds = policy.encode_prompt([""] * len(captions))  # :904-910
    topk = 1000 // NPO_GRID
    index = NPO_INDEX.clone()
    start_timesteps = ddim_timesteps[index]
    noisy = ext(alpha, start_timesteps) * latents + ext(sigma, start_timesteps) * noise
    tmp_t, tmp_x = start_timesteps, noisy
    with torch.no_grad():
        mask = torch.ones_like(index, dtype=torch.float64).view(-1, 1, 1, 1)
        for i in range(NPO_K + 1):
            cond_out = _sd_unet(teacher, tmp_x, tmp_t, prompt_embeds)
            uncond_out = _sd_unet(teacher, tmp_x, tmp_t, uncond_prompt_embeds)
            cond_x0, uncond_x0 = origin(cond_out, tmp_t, tmp_x), origin(uncond_out, tmp_t, tmp_x)
            pred_x0 = cond_x0 + NPO_W * (cond_x0 - uncond_x0)
            if i >= NPO_K:
                break
            pred_noise = cond_out + NPO_W * (cond_out - uncond_out)
            a_prev = ext(alpha_prev, index)
            stepped = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * pred_noise
            tmp_x = stepped * mask + tmp_x * (1 - mask)
            index = index - 1
            mask = torch.where(index.view(-1, 1, 1, 1) < 0, 0.0, mask)
            index = torch.where(index < 0, torch.zeros_like(index), index)
            tmp_t = torch.where(tmp_t - topk < 0, torch.zeros_like(tmp_t), tmp_t - topk)
            assert not bool((mask == 0.0).all()), "the official loop would stop early here"
        x_prev, timesteps = tmp_x, tmp_t
    assert timesteps.tolist() == NPO_FINAL_T
    nsr = ext(sigma, timesteps) / ext(alpha, timesteps)
    sampled_timesteps = NPO_S.clone()  # timesteps + randint(1, 999 - timesteps + 1)
    sampled_sigmas, sampled_alphas = ext(sigma, sampled_timesteps), ext(alpha, sampled_timesteps)
    sampled_nsr = sampled_sigmas / sampled_alphas
    target = pred_x0.detach()
    sampled_x = x_prev / ext(alpha, timesteps) + (sampled_nsr**2 - nsr**2).sqrt() * z
    sampled_x = sampled_x * sampled_alphas
    model_pred = _sd_unet(policy.unet, sampled_x, sampled_timesteps, prompt_embeds)
    model_pred = (sampled_x - sampled_sigmas * model_pred) / sampled_alphas
    return torch.mean(torch.sqrt((model_pred - target) ** 2 + NPO_HUBER_C**2) - NPO_HUBER_C)


def test_self_npo_step_matches_official_train(monkeypatch):
    """One shared_step of SelfNPOModule == G-U-N/Diffusion-NPO Self-NPO/train.py:965-1148 (grid
    t_i = 40(i+1)-1, K = 5 EMA-teacher DDIM steps with w = -1, the teacher's final x̂0 as target,
    x_t' renoised to s, the student's x̂0 from the text prediction, pseudo-Huber c = 0.001)."""
    module = make_npo_module()
    batch = npo_batch()
    noise, z = _seeded(4, 4, 8, 8, seed=21), _seeded(4, 4, 8, 8, seed=22)
    ref_loss = official_self_npo_step(module, batch, noise, z)
    ref_loss.backward()
    ref_grad = trainable_grad(module.policy.unet)
    module.policy.unet.zero_grad(set_to_none=True)

    pin_npo_draws(monkeypatch, module, noise, z)
    out = module.shared_step(batch, "train", 0)
    out.loss.backward()
    assert_parity(out.loss, ref_loss.detach(), trainable_grad(module.policy.unet), ref_grad)
    assert out.metrics["student_timestep"].item() == NPO_S.double().mean().item()
