"""On-policy step pools: candidates branched from one shared x_t, ranked by a step scorer.

The SPO pool (METHODS §2.1, ``multi_sample_pipeline.py``) as one reusable sampler. A flow policy
(SD3/SD3.5) steps with Flow-GRPO's SDE instead of DDIM (:func:`~lightning_pref.models.sampling.
transition`; η is its noise level) on the same integer levels. For each prompt
the policy runs down a DDIM chain with η and CFG. From the first step with ``t ≤ max_timestep`` on,
every step branches ``num_candidates`` samples x_{t−1} from the *same* x_t (same mean, different
DDIM noise); at the next step each candidate's own x̂0 is decoded and scored at the candidate's
timestep (the forward pass that continues the chain provides it), the best and worst form a pair,
and the pair is kept if ``tanh((s_w − s_l) / 2) > threshold`` (⇔ the 2-way softmax gap of SPO).
The chain continues from a uniformly random candidate (SPO) or from the winner. The last
candidates are final samples, scored at timestep 0. With 20 steps and ``max_timestep=751`` the
transitions start at t = 751, 701, …, 1: SPO's ``divert_start_step=4``, up to 16 per prompt.

TailorPO-G's reward guidance (METHODS §3, a reconstruction): after ranking, the winner is moved
by ``reward_guidance · σ_t`` along the unit-RMS gradient of the reward at its x̂0 (ε̂ held fixed, so
∂x̂0/∂x_{t−1} = 1/√ā; for a flow policy v is held fixed, ∂x̂0/∂x_{t−1} = 1), which widens the
gap; the scorer must then be differentiable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import DDIMStep, cfg_predict, ddim_timesteps, transition
from lightning_pref.scoring.base import Scorer
from lightning_pref.types import StepPoolBatch

__all__ = ["StepPool", "StepPoolSampler"]


@dataclass
class StepPool:
    """Every step pair of one generation round; ``valid`` marks those above the threshold."""

    batch: StepPoolBatch  # N step pairs (valid or not)
    score_w: Tensor  # [N]
    score_l: Tensor  # [N]
    valid: Tensor  # [N] bool
    final_scores: Tensor  # [P·k] scores of the final candidates (the reward curve)
    seconds: float  # wall time of the round

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def select(self, index: Tensor) -> StepPoolBatch:
        """The step pairs at ``index`` ([n] long)."""
        b, idx = self.batch, index.tolist()
        return StepPoolBatch(
            b.x_t[index],
            b.x_w[index],
            b.x_l[index],
            b.timesteps[index],
            b.prev_timesteps[index],
            [b.captions[i] for i in idx],
        )

    def stats(self) -> dict[str, float]:
        """Scalars to log: valid fraction, scores, gap and generation speed."""
        gap = self.score_w - self.score_l
        scores = torch.cat([self.score_w, self.score_l])
        return {
            "valid_frac": float(self.valid.float().mean()) if len(self) else 0.0,
            "score_mean": float(scores.mean()) if len(self) else 0.0,
            "score_std": float(scores.std()) if len(self) > 1 else 0.0,
            "gap_mean": float(gap.mean()) if len(self) else 0.0,
            "final_score": float(self.final_scores.mean()),
            "pairs_per_s": float(self.valid.sum()) / max(self.seconds, 1e-9),
        }


class _Recorder:
    """Collects the step pairs of one round (lists of per-step tensors)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}
        self.captions: list[str] = []

    def add(self, captions: list[str], **tensors: Tensor) -> None:
        for key, value in tensors.items():
            self.parts.setdefault(key, []).append(value)
        self.captions += captions

    def cat(self, key: str) -> Tensor:
        return torch.cat(self.parts[key])


class StepPoolSampler(nn.Module):
    """Generates on-policy step pools (SPO / TailorPO / TailorPO-G).

    Args:
        scorer: the step-wise reward: ``scorer(images, captions, timesteps) -> [N]``; frozen here.
        num_candidates: k candidates branched from each shared x_t (SPO: 4 for SD1.5, 2 for SDXL).
        threshold: keep a pair if ``tanh((s_w − s_l)/2)`` exceeds it (SPO: 0.3 SD1.5, 0.4 SDXL).
        num_steps: DDIM steps of the chain (SPO: 20).
        guidance_scale: CFG weight in sampling and in training (SPO: 5.0).
        eta: DDIM η; must be > 0, the transitions need a density (SPO: 1.0).
        max_timestep: branch from the first step with ``t ≤ max_timestep`` (SPO: 751).
        resample: continue the chain from a ``random`` candidate (SPO) or the ``winner``.
        reward_guidance: TailorPO-G's push of the winner in units of σ_t (0 = off).
    """

    def __init__(
        self,
        scorer: Scorer,
        num_candidates: int = 4,
        threshold: float = 0.3,
        num_steps: int = 20,
        guidance_scale: float = 5.0,
        eta: float = 1.0,
        max_timestep: int = 751,
        resample: Literal["random", "winner"] = "random",
        reward_guidance: float = 0.0,
    ) -> None:
        super().__init__()
        if num_candidates < 2:
            raise ValueError(f"num_candidates must be at least 2, got {num_candidates}")
        if eta <= 0:
            raise ValueError("eta must be > 0: a deterministic step has no log-probability")
        if resample not in ("random", "winner"):
            raise ValueError(f"resample must be 'random' or 'winner', got '{resample}'")
        self.scorer = scorer.requires_grad_(False).eval()
        self.num_candidates, self.threshold = num_candidates, threshold
        self.num_steps, self.guidance_scale, self.eta = num_steps, guidance_scale, eta
        self.max_timestep, self.resample = max_timestep, resample
        self.reward_guidance = reward_guidance

    def train(self, mode: bool = True) -> StepPoolSampler:
        """Keep the scorer in eval mode whatever the module's mode."""
        super().train(mode)
        self.scorer.eval()
        return self

    def schedule(self, num_train_timesteps: int) -> tuple[list[int], int, int]:
        """``(timesteps, index of the first branching step, step ratio)``."""
        steps = ddim_timesteps(num_train_timesteps, self.num_steps)
        branch = next((i for i, t in enumerate(steps) if t <= self.max_timestep), None)
        if branch is None:
            raise ValueError(f"no DDIM step has t <= max_timestep={self.max_timestep}")
        return steps, branch, num_train_timesteps // self.num_steps

    def predict(
        self, denoiser: nn.Module, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor
    ) -> Tensor:
        """CFG-combined prediction at ``x`` (both branches in one forward).

        A policy without CFG (FLUX: its guidance is embedded) predicts from ``cond`` alone.
        """
        if not getattr(denoiser, "uses_cfg", True):
            return denoiser(x, t, cond)
        return cfg_predict(denoiser, x, t, cond, uncond, self.guidance_scale)

    def _score(self, policy: DiffusionPolicy, x0: Tensor, captions: list[str], t: int) -> Tensor:
        images = policy.decode_latents(x0)
        timesteps = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
        return self.scorer(images, captions, timesteps).float()

    def _guide(
        self, policy: DiffusionPolicy, x0: Tensor, captions: list[str], t: int, std: Tensor
    ) -> tuple[Tensor, Tensor]:
        """TailorPO-G: (shift of x_{t−1}, shift of x̂0) along the reward gradient at ``x0``."""
        with torch.enable_grad(), torch.inference_mode(False):
            x0 = x0.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._score(policy, x0, captions, t).sum(), x0)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
        shift = self.reward_guidance * std.view(-1, 1, 1, 1) * grad / rms  # [P, C, h, w]
        if policy.is_flow:  # x̂0 = x − σ·v with v held fixed: ∂x̂0/∂x = 1
            return shift, shift
        a = policy.alphas_cumprod[max(t, 0)]
        return shift, shift / a.sqrt()

    @torch.no_grad()
    def generate(
        self, policy: DiffusionPolicy, captions: list[str], generator: torch.Generator
    ) -> StepPool:
        """Run one round for ``captions`` (P prompts) with the current policy weights."""
        start = time.perf_counter()
        was_training = policy.training
        policy.eval()
        try:
            pool = self._generate(policy, list(captions), generator)
        finally:
            policy.train(was_training)
        pool.seconds = time.perf_counter() - start
        return pool

    def _generate(
        self, policy: DiffusionPolicy, captions: list[str], generator: torch.Generator
    ) -> StepPool:
        device, n, k = policy.unet.device, len(captions), self.num_candidates
        cond, uncond = policy.encode_prompt(captions), policy.encode_prompt([""] * n)  # [P, L, D]
        x = torch.randn((n, *policy.latent_shape), generator=generator, device=device)
        steps, branch, ratio = self.schedule(policy.num_train_timesteps)
        rec, rows = _Recorder(), torch.arange(n, device=device)
        x = self._run_chain(policy, x, steps[:branch], ratio, cond, uncond, generator)
        t = torch.full((n,), steps[branch], device=device, dtype=torch.long)
        step = _transition(policy, self.predict(policy, x, t, cond, uncond), x, t, ratio, self.eta)
        shared, t_shared = x, steps[branch]
        cand = self._branch(step, generator)  # [P, k, C, h, w]
        cond_k, uncond_k = cond.repeat_interleave(k, 0), uncond.repeat_interleave(k, 0)
        for t_int in [*steps[branch + 1 :], None]:
            if t_int is None:  # the candidates are final samples
                x0, score_t, step_all = cand.flatten(0, 1), 0, None
            else:
                flat, tk = cand.flatten(0, 1), torch.full((n * k,), t_int, device=device)
                out = self.predict(policy, flat, tk, cond_k, uncond_k)
                step_all = _transition(policy, out, flat, tk, ratio, self.eta)
                x0, score_t = step_all.pred_x0, t_int
            scores, win, lose, s_w = self._rank(policy, x0, cand, captions, score_t, step.std)
            rec.add(
                captions,
                x_t=shared,
                x_w=cand[rows, win],
                x_l=cand[rows, lose],
                t=torch.full((n,), t_shared, device=device, dtype=torch.long),
                s_w=s_w,
                s_l=scores[rows, lose],
            )
            if step_all is None:
                final_scores = scores.flatten()
                break
            if self.resample == "winner":
                pick = win
            else:
                pick = torch.randint(0, k, (n,), generator=generator, device=device)
            shared, t_shared = cand[rows, pick], t_int
            step = _take(step_all, n, k, rows, pick)
            cand = self._branch(step, generator)
        return _pool(rec, ratio, final_scores, self.threshold)

    def _run_chain(
        self,
        policy: DiffusionPolicy,
        x: Tensor,
        steps: list[int],
        ratio: int,
        cond: Tensor,
        uncond: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """Runs the shared chain down ``steps`` (before branching): x_t ``[P, C, h, w]``."""
        n, device = x.shape[0], x.device
        for t_int in steps:
            t = torch.full((n,), t_int, device=device, dtype=torch.long)
            out = self.predict(policy, x, t, cond, uncond)
            x = transition(policy, out, x, t, t - ratio, self.eta, generator).prev_sample
        return x

    def _rank(
        self,
        policy: DiffusionPolicy,
        x0: Tensor,
        cand: Tensor,
        captions: list[str],
        t: int,
        std: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scores the candidates' ``x0`` ``[P·k, C, h, w]`` at ``t`` and ranks them per prompt.

        With reward guidance the winner is moved in ``cand`` ``[P, k, C, h, w]`` (in place) and
        its score is that of its moved x̂0.

        Returns:
            ``(scores [P, k], win [P], lose [P], s_w [P])``.
        """
        n, k = cand.shape[:2]
        rows = torch.arange(n, device=cand.device)
        caps_k = [c for c in captions for _ in range(k)]
        scores = self._score(policy, x0, caps_k, t).view(n, k)  # [P, k]
        win, lose = scores.argmax(1), scores.argmin(1)  # [P]
        s_w = scores[rows, win]
        if self.reward_guidance > 0:
            x0_w = x0.view(n, k, *x0.shape[1:])[rows, win]  # [P, C, h, w]
            shift, shift_x0 = self._guide(policy, x0_w, captions, t, std)
            cand[rows, win] = cand[rows, win] + shift
            s_w = self._score(policy, x0_w + shift_x0, captions, t)
        return scores, win, lose, s_w

    def _branch(self, step: DDIMStep, generator: torch.Generator) -> Tensor:
        """Draw the k candidates ``mean + σ z`` of one transition: ``[P, k, C, h, w]``."""
        k = self.num_candidates
        mean = step.mean.unsqueeze(1).expand(-1, k, *step.mean.shape[1:])
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + step.std.view(-1, 1, 1, 1, 1) * noise


def _transition(
    policy: DiffusionPolicy, out: Tensor, x: Tensor, t: Tensor, ratio: int, eta: float
) -> DDIMStep:
    """Mean and σ of x_t → x_{t−ratio}; its ``prev_sample`` is unused (``_branch`` draws)."""
    return transition(policy, out, x, t, t - ratio, eta, prev_sample=x)


def _pool(rec: _Recorder, ratio: int, final_scores: Tensor, threshold: float) -> StepPool:
    """The round's step pairs; a pair is valid if ``tanh((s_w − s_l) / 2) > threshold``."""
    t_all = rec.cat("t")
    s_w, s_l = rec.cat("s_w"), rec.cat("s_l")
    valid = torch.tanh((s_w - s_l) / 2) > threshold
    batch = StepPoolBatch(
        rec.cat("x_t"), rec.cat("x_w"), rec.cat("x_l"), t_all, t_all - ratio, rec.captions
    )
    return StepPool(batch, s_w, s_l, valid, final_scores, 0.0)


def _take(step: DDIMStep, n: int, k: int, rows: Tensor, pick: Tensor) -> DDIMStep:
    """The transitions of the picked candidates out of a flat ``[P·k]`` step."""

    def sel(x: Tensor) -> Tensor:
        return x.view(n, k, *x.shape[1:])[rows, pick]

    return DDIMStep(
        sel(step.prev_sample), sel(step.mean), sel(step.std), sel(step.pred_x0), sel(step.eps)
    )
