"""SelfNPOModule: Self-NPO's truncated-diffusion fine-tuning of a negative model (METHODS §11.2)."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_pref.errors import TrainingDivergedError
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.objectives.base import TargetObjective
from lightning_pref.objectives.self_npo import (
    SelfNPOLoss,
    renoise,
    sample_later_timesteps,
    self_npo_grid,
    truncated_diffusion_target,
)
from lightning_pref.types import DenoiseToTarget, ImagePairBatch, ObjectiveOutput

__all__ = ["SelfNPOModule"]

_TEACHER_KEY = "self_npo_teacher"


class SelfNPOModule(PreferenceModule):
    """Trains a negative model from real images alone: no pairs, no reward, no reference.

    Each step (official ``Self-NPO/train.py``; the math is in :mod:`lightning_pref.objectives.
    self_npo`): VAE-encode the batch's images, noise them to a random timestep of the 25-step
    grid, run K guided DDIM steps of a frozen EMA teacher to get ``(x_t', t', x̂0)``, renoise
    ``x_t'`` to ``s ~ U{t'+1, ..., T-1}`` and pull the student's x̂0 at ``(x_s, s, c)`` to the
    teacher's x̂0. After every optimizer step the teacher follows ``θ⁻ ← d·θ⁻ + (1-d)·θ``.
    Pair batches are read for their images and captions only (labels are ignored). The teacher
    is saved in checkpoints under ``self_npo_teacher``, so a resumed run continues its average.

    The trained model is used as ``negative`` in :class:`~lightning_pref.models.negative.
    NegativeGuidance` with the model it started from as ``base``.

    Args:
        policy: the diffusion model being tuned (official: the full UNet).
        objective: the x0-space loss (a :class:`TargetObjective`); None = :class:`SelfNPOLoss`,
            pseudo-Huber with c = 0.001.
        optimizer: optimizer factory (official SD1.5: AdamW8bit, lr 1e-6, wd 1e-3).
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        guidance_weight: w of the teacher, ``e_c + w·(e_c - e_u)`` (SD1.5: -1, SDXL: -5).
        num_teacher_steps: K (official 5).
        num_grid_steps: DDIM grid size (official 25: t = 39, 79, ..., 999).
        ema_decay: teacher EMA decay d (official 0.999).
        images: train on the winners' images only, or on both images of every pair.
        seed: seed of the per-step generators; None: the run's ``--seed_everything``.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: TargetObjective | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        guidance_weight: float = -1.0,
        num_teacher_steps: int = 5,
        num_grid_steps: int = 25,
        ema_decay: float = 0.999,
        images: Literal["winner", "both"] = "both",
        seed: int | None = None,
    ) -> None:
        objective = objective if objective is not None else SelfNPOLoss()
        super().__init__(policy, objective, optimizer, lr_scheduler, "copy", seed)
        self.guidance_weight = guidance_weight
        self.num_teacher_steps = num_teacher_steps
        self.num_grid_steps = num_grid_steps
        self.ema_decay = ema_decay
        self.images = images
        self.teacher_unet: nn.Module | None = None

    def configure_model(self) -> None:
        """Load the policy and make the teacher, a frozen copy of its UNet."""
        super().configure_model()  # TargetObjective.requires_reference is False: no reference
        if self.teacher_unet is None:
            self.teacher_unet = copy.deepcopy(self.policy.unet).requires_grad_(False).eval()

    def _trainable_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(teacher, student) parameters at the student's trainable positions."""
        assert self.teacher_unet is not None, "configure_model() was not called"
        return [
            (tp, sp)
            for tp, sp in zip(
                self.teacher_unet.parameters(), self.policy.unet.parameters(), strict=True
            )
            if sp.requires_grad
        ]

    @torch.no_grad()
    def update_teacher(self) -> None:
        """``θ⁻ ← d·θ⁻ + (1-d)·θ`` on the trainable weights (the frozen ones are equal)."""
        for tp, sp in self._trainable_pairs():
            tp.mul_(self.ema_decay).add_(sp.detach(), alpha=1 - self.ema_decay)

    def _teacher(self, x: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
        assert self.teacher_unet is not None
        return self.policy.unet_forward(self.teacher_unet, x, t, embeds)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> Tensor:
        """Start timesteps ``[n]``: uniform over the DDIM grid (one place, so tests can pin it)."""
        grid = self_npo_grid(self.policy.num_train_timesteps, self.num_grid_steps).to(self.device)
        return grid[torch.randint(0, len(grid), (n,), generator=generator, device=self.device)]

    def sample_student_timesteps(self, timesteps: Tensor, generator: torch.Generator) -> Tensor:
        """The student's ``s ~ U{t+1, ..., T-1}`` ``[n]`` (one place, so tests can pin it)."""
        return sample_later_timesteps(timesteps, self.policy.num_train_timesteps, generator)

    def shared_step(self, batch: ImagePairBatch, stage: str, batch_idx: int) -> ObjectiveOutput:
        """Teacher target, renoising and the student's x0 loss for one batch."""
        gen = self.step_generator(stage, batch_idx)
        pixels, captions = batch.pixels_w, list(batch.captions)
        if self.images == "both":
            pixels, captions = torch.cat([batch.pixels_w, batch.pixels_l]), captions * 2
        x0 = self.policy.encode_images(pixels, gen)  # [N, C, h, w]
        cond = self.policy.encode_prompt(captions)  # [N, L, D]
        uncond = self.policy.encode_prompt([""] * len(captions))
        num_t, a = self.policy.num_train_timesteps, self.policy.alphas_cumprod
        t = self.sample_timesteps(x0.shape[0], gen)  # [N] grid timesteps
        noise = self.sample_noise(x0.shape, gen, x0.dtype)
        x_t = self.policy.add_noise(x0, noise, t)  # [N, C, h, w]
        teacher = truncated_diffusion_target(
            self._teacher, a, self.policy.prediction_type, x_t, t, cond, uncond,
            self.guidance_weight, self.num_teacher_steps, num_t // self.num_grid_steps,
        )  # fmt: skip
        s = self.sample_student_timesteps(teacher.timesteps, gen)  # [N]
        z = self.sample_noise(x0.shape, gen, teacher.x_t.dtype)
        x_s = renoise(teacher.x_t, teacher.timesteps, s, a, z)  # [N, C, h, w]
        pred = self.policy(x_s, s, cond)  # [N, C, h, w]
        a_s = a[s].view(-1, *[1] * (x_s.dim() - 1))
        ptype = self.policy.prediction_type
        return self.objective(DenoiseToTarget(pred, x_s, a_s, ptype, teacher.target, s))

    def training_step(self, batch: ImagePairBatch, batch_idx: int) -> Tensor | None:
        """One optimisation step; an empty batch (every row corrupt) is skipped."""
        if batch.pixels_w.shape[0] == 0:
            return None
        out = self.shared_step(batch, "train", batch_idx)
        if not torch.isfinite(out.loss):
            raise TrainingDivergedError(f"non-finite loss at step {self.global_step}")
        self.log_output("train", out, batch.pixels_w.shape[0])
        return out.loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then move the EMA teacher: once per optimizer step, not per micro-batch.

        As the official script (``if accelerator.sync_gradients``): under gradient accumulation
        the teacher moves only when the student does.
        """
        super().optimizer_step(*args, **kwargs)
        self.update_teacher()

    def validation_step(self, batch: ImagePairBatch, batch_idx: int) -> None:
        """The training loss on fixed seeds."""
        if batch.pixels_w.shape[0] > 0:
            out = self.shared_step(batch, "val", batch_idx)
            self.log_output("val", out, batch.pixels_w.shape[0])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the teacher's trainable-position weights."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[_TEACHER_KEY] = [tp.detach().cpu().clone() for tp, _ in self._trainable_pairs()]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the teacher (a checkpoint without one keeps the current teacher)."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(_TEACHER_KEY)
        if saved is not None and self.teacher_unet is not None:
            with torch.no_grad():
                for (tp, _), value in zip(self._trainable_pairs(), saved, strict=True):
                    tp.copy_(value)
