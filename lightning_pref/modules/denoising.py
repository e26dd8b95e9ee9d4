"""DenoisingModule: what the modules that noise data images and denoise them share.

:class:`~lightning_pref.modules.offline.OfflinePairModule` (pairs) and
:class:`~lightning_pref.modules.unpaired.UnpairedModule` (single labelled images) are its two
subclasses: timesteps drawn in a range, a noising strategy (forward noising or an inversion), and
the training, validation and test steps around each subclass's ``shared_step``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_pref.errors import ConfigError, TrainingDivergedError
from lightning_pref.models.fast import FastPath
from lightning_pref.models.noising import FlowInversion, ForwardNoising, NoisingStrategy
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import PreferenceModule, ReferenceMode
from lightning_pref.objectives.base import PairObjective, UnpairedObjective
from lightning_pref.types import ObjectiveOutput

__all__ = ["DenoisingModule"]


class DenoisingModule(PreferenceModule):
    """Noises data images at sampled timesteps; subclasses denoise them and apply the objective.

    Args:
        policy: the diffusion model being tuned.
        objective: the objective (a pair or an unpaired one).
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        reference: ``auto``, ``copy`` or ``adapters_off``.
        seed: seed of the per-step generators; None: the run's ``--seed_everything``.
        timestep_range: sample t uniformly in ``[low, high)``; None = the full schedule.
        noising: how x0 becomes x_t and the target; None = ``objective.default_noising()``.
        fast: speed options (:class:`~lightning_pref.models.FastPath`); None: the plain path.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: PairObjective | UnpairedObjective,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        reference: ReferenceMode = "auto",
        seed: int | None = None,
        timestep_range: tuple[int, int] | None = None,
        noising: NoisingStrategy | None = None,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__(policy, objective, optimizer, lr_scheduler, reference, seed, fast)
        self.timestep_range = timestep_range
        self.noising = noising if noising is not None else objective.default_noising()

    def configure_model(self) -> None:
        """Build the models; a schedule-weighted objective (CaPO) gets the policy's schedule."""
        super().configure_model()
        if self.policy.is_flow and not isinstance(self.noising, ForwardNoising | FlowInversion):
            raise ConfigError(
                f"{type(self.noising).__name__} inverts along a DDPM noise schedule, which a "
                "rectified-flow FlowPolicy does not have: set model.init_args.noising to "
                "lightning_pref.models.noising.FlowInversion (its flow equivalent)"
            )
        bind = getattr(self.objective, "bind_schedule", None)
        if bind is not None:
            bind(self.policy.alphas_cumprod)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> Tensor:
        """Training timesteps ``[n]`` from the policy (a flow policy may draw logit-normal)."""
        low, high = self.timestep_range or (0, self.policy.num_train_timesteps)
        return self.policy.sample_timesteps(n, generator, low, high, self.device)

    def noise(
        self, x0: Tensor, t: Tensor, noise: Tensor, embeds: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, target, t)`` from the noising strategy (inversion runs the policy, no grad).

        The returned t is the one to give the denoiser (a strategy may move it to its grid).
        """
        noised = self.noising(self.policy, x0, t, noise, embeds, generator)
        used = t if noised.timesteps is None else noised.timesteps
        return noised.x_t, noised.target, used

    def relabelled(self, batch: Any) -> Any:
        """The training batch as the objective should see it (OfflinePairModule: AI feedback)."""
        return batch

    def batch_size(self, batch: Any) -> int:
        """Items in the batch as it arrives; 0 (every row corrupt) means skip."""
        raise NotImplementedError

    def shared_step(self, batch: Any, stage: str, batch_idx: int) -> ObjectiveOutput:
        """Encode, noise, denoise and score one batch."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One optimisation step; a batch whose rows were all corrupt is skipped."""
        self.rows_skipped += batch.num_skipped
        if batch.num_skipped:
            self.log("train/rows_skipped", float(self.rows_skipped), on_step=True)
        bsz = self.batch_size(batch)
        if bsz == 0:
            return None
        out = self.shared_step(self.relabelled(batch), "train", batch_idx)
        if not torch.isfinite(out.loss):
            raise TrainingDivergedError(
                f"non-finite loss {out.loss.item()} at step {self.global_step}; lower the lr or "
                "beta, or enable gradient clipping (--trainer.gradient_clip_val 1.0)"
            )
        self.log_output("train", out, bsz)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Loss and implicit accuracy on fixed seeds."""
        if self.batch_size(batch) == 0:
            return
        self.log_output("val", self.shared_step(batch, "val", batch_idx), self.batch_size(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """As validation, logged under ``test/``."""
        if self.batch_size(batch) == 0:
            return
        self.log_output("test", self.shared_step(batch, "test", batch_idx), self.batch_size(batch))
