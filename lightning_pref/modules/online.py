"""StepPoolModule: on-policy training on step pools (SPO, TailorPO, TailorPO-G, D3PO-style)."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_pref.data.step_pool import StepPool, StepPoolSampler
from lightning_pref.errors import TrainingDivergedError
from lightning_pref.models.fast import FastPath
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import gaussian_logprob, transition
from lightning_pref.modules.base import PreferenceModule, ReferenceMode
from lightning_pref.objectives.base import StepObjective
from lightning_pref.types import ObjectiveOutput, PromptBatch, StepPair, StepPoolBatch

__all__ = ["StepPoolModule"]


class StepPoolModule(PreferenceModule):
    """Generate a step pool with the current weights, then train on it (METHODS §2.1-2.3).

    Each training batch is one round: P prompts (per device) → :meth:`StepPoolSampler.generate`
    (eval mode, no grad) → the valid step pairs, shuffled, in optimizer steps of
    ``train_batch_size`` pairs: one pass, no replay, as SPO's ``train_spo.py``. For each pair the
    policy and the reference predict at the shared x_t (with CFG if ``train_cfg``), the DDIM
    posterior gives μ and σ, and the objective receives the mean-reduced log-densities of x_w and
    x_l. ``trainer.max_steps`` counts optimizer steps.

    Optimisation is manual (several steps per round), so clip gradients here with
    ``gradient_clip_val`` rather than on the Trainer. Under DDP every rank takes the same number of
    steps per round (the largest pool over ranks decides; smaller pools cycle, and a rank with no
    valid pair contributes a zero-weighted loss). A round draws its noise from a generator seeded by
    (seed, epoch, round, rank), so a run resumed from a checkpoint regenerates the same pools.

    Args:
        policy: the diffusion model being tuned (it also generates the pools).
        objective: a step objective (SPO, TailorPO).
        pool: the step-pool sampler (candidates, threshold, scorer, steps, CFG, η).
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        reference: ``auto``, ``copy`` or ``adapters_off``.
        seed: seed of the per-round generators; None: the run's ``--seed_everything``.
        train_batch_size: step pairs per optimizer step (SPO SD1.5: 10).
        train_cfg: apply CFG to the training predictions as in sampling (SPO: True).
        gradient_clip_val: max global grad norm; None = no clipping (SPO's code clips nothing).
        fast: speed options (:class:`~lightning_pref.models.FastPath`); None: the plain path.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: StepObjective,
        pool: StepPoolSampler,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        reference: ReferenceMode = "auto",
        seed: int | None = None,
        train_batch_size: int = 10,
        train_cfg: bool = True,
        gradient_clip_val: float | None = None,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__(policy, objective, optimizer, lr_scheduler, reference, seed, fast)
        self.pool = pool
        self.train_batch_size = train_batch_size
        self.train_cfg = train_cfg
        self.gradient_clip_val = gradient_clip_val
        self.automatic_optimization = False

    # ------------------------------------------------------------------ log-probabilities
    def _predict(self, batch: StepPoolBatch, reference: bool) -> Tensor:
        cond = self.policy.encode_prompt(batch.captions)  # [B, L, D]
        denoise = self.reference_predict if reference else self.policy
        if not self.train_cfg or not self.policy.uses_cfg:  # FLUX: guidance is embedded
            return denoise(batch.x_t, batch.timesteps, cond)
        uncond = self.policy.encode_prompt([""] * len(batch.captions))
        return self.pool.predict(denoise, batch.x_t, batch.timesteps, cond, uncond)

    def _logps(self, batch: StepPoolBatch, out: Tensor) -> tuple[Tensor, Tensor]:
        step = transition(
            self.policy,
            out,
            batch.x_t,
            batch.timesteps,
            batch.prev_timesteps,
            self.pool.eta,
            prev_sample=batch.x_w,
        )
        logp_w = gaussian_logprob(batch.x_w, step.mean, step.std)  # [B]
        return logp_w, gaussian_logprob(batch.x_l, step.mean, step.std)

    def step_pair(self, batch: StepPoolBatch) -> StepPair:
        """Policy (with grad) and reference (without) log-densities of both transitions."""
        logp_w, logp_l = self._logps(batch, self._predict(batch, reference=False))
        with torch.no_grad():
            ref_w, ref_l = self._logps(batch, self._predict(batch, reference=True))
        return StepPair(logp_w, logp_l, ref_w, ref_l, batch.timesteps)

    # ------------------------------------------------------------------ rounds
    def generate_pool(self, batch: PromptBatch, generator: torch.Generator) -> StepPool:
        """One generation round for ``batch`` with the current weights."""
        return self.pool.generate(self.policy, batch.captions, generator)

    def _log_pool(self, stage: str, pool: StepPool) -> None:
        # reduced across ranks even per step: every rank generates its own share of the round
        for key, value in pool.stats().items():
            on_step = stage == "train"
            self.log(
                f"{stage}/pool_{key}",
                value,
                on_step=on_step,
                on_epoch=not on_step,
                sync_dist=True,
                batch_size=len(pool.final_scores),
                prog_bar=key == "final_score",
            )

    def _schedule(self, pool: StepPool, generator: torch.Generator) -> tuple[list[Tensor], bool]:
        """Index batches for this round, the same count on every rank; False = zero-weighted."""
        valid = pool.valid.nonzero().flatten()
        usable = valid if len(valid) else torch.arange(len(pool), device=pool.valid.device)
        count = torch.tensor(float(len(valid)), device=self.device)
        most = int(self.trainer.strategy.reduce(count, reduce_op="max").item())
        steps = math.ceil(most / self.train_batch_size)
        if steps == 0 or len(usable) == 0:
            return [], True
        order = usable[torch.randperm(len(usable), generator=generator, device=usable.device)]
        if len(order) <= (steps - 1) * self.train_batch_size:
            # another rank has more pairs: cycle ours so every rank takes `steps` optimizer steps
            need = steps * self.train_batch_size
            order = order.repeat(math.ceil(need / len(order)))[:need]
        # as the official loop: the last chunk may be partial; no pair is repeated on one rank
        return list(order.split(self.train_batch_size))[:steps], len(valid) > 0

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Generate one pool, then take its optimizer steps."""
        generator = self.step_generator("train", batch_idx)
        pool = self.generate_pool(batch, generator)
        self._log_pool("train", pool)
        chunks, has_valid = self._schedule(pool, generator)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for index in chunks:
            if self.trainer.max_steps >= 0 and self.global_step >= self.trainer.max_steps:
                break
            out = self.objective(self.step_pair(pool.select(index)))
            if not torch.isfinite(out.loss):
                raise TrainingDivergedError(
                    f"non-finite loss {out.loss.item()} at step {self.global_step}; lower the lr "
                    "or beta, or set --model.init_args.gradient_clip_val 1.0"
                )
            optimizer.zero_grad()
            self.manual_backward(out.loss if has_valid else out.loss * 0.0)
            if self.gradient_clip_val is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            self.log_output("train", out, len(index))
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        """Pool statistics (the reward curve) and the loss on all pairs, on fixed seeds."""
        pool = self.generate_pool(batch, self.step_generator("val", batch_idx))
        self._log_pool("val", pool)
        if len(pool):
            out: ObjectiveOutput = self.objective(self.step_pair(pool.batch))
            self.log_output("val", out, len(pool))
