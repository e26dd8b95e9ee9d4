"""PreferenceModule: the plumbing every preference method shares, written once."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_pref.errors import ConfigError
from lightning_pref.models.fast import FastPath
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.objectives.base import PreferenceObjective
from lightning_pref.training.seeding import resolve_seed
from lightning_pref.types import ObjectiveOutput

__all__ = ["PreferenceModule", "ReferenceMode"]

ReferenceMode = Literal["auto", "copy", "adapters_off"]


class PreferenceModule(LightningModule):
    """Holds the trainable policy and its frozen reference and hands their outputs to an objective.

    - The reference is built only if ``objective.requires_reference``: a frozen deep copy of the
      UNet (``copy``) or the same UNet with LoRA adapters switched off (``adapters_off``);
      ``auto`` picks ``adapters_off`` for LoRA policies and ``copy`` otherwise. It never receives
      gradients and never enters a checkpoint.
    - Checkpoints hold trainable weights only (LoRA-only checkpoints stay small); loading checks
      that every trainable weight is present, so a mismatched checkpoint fails loudly.
    - All randomness of a step (timesteps, noise, VAE posterior samples) comes from a generator
      seeded by (seed, stage, epoch, batch index, rank), so validation curves are comparable across
      runs and a resumed run draws exactly what an uninterrupted one would.

    Args:
        policy: the diffusion model being tuned.
        objective: the preference loss.
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        reference: how the frozen reference is made.
        seed: seed of the per-step generators; None: the run's ``--seed_everything``.
        fast: speed options (``torch.compile``, channels-last, a bf16 reference, ...); None: the
            plain path. See :class:`~lightning_pref.models.FastPath`.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: PreferenceObjective,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        reference: ReferenceMode = "auto",
        seed: int | None = None,
        fast: FastPath | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=[
                "policy",
                "objective",
                "pool",
                "noising",
                "optimizer",
                "lr_scheduler",
                "fast",
                "relabel",
            ]  # fmt: skip
        )
        self.fast = fast if fast is not None else FastPath()
        self.hparams["fast"] = asdict(self.fast)  # plain dict: loadable with weights_only=True
        self._fast_applied = False
        self.policy = policy
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.reference_mode = reference
        self.seed = resolve_seed(seed)
        self.reference_unet: nn.Module | None = None
        self.strict_loading = False
        self.rows_skipped = 0

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        """Load the policy and build the reference (called by Lightning before device moves)."""
        self.policy.build()
        if self.objective.requires_reference and self.resolved_reference_mode == "copy":
            if self.reference_unet is None:
                if any(hasattr(p, "ds_id") for p in self.policy.unet.parameters()):
                    # ZeRO-3 partitioned the weights as they were created: load a second copy
                    ref = self.policy.load_base_unet()
                else:
                    ref = copy.deepcopy(self.policy.unet)
                    if self.policy.is_lora:
                        ref.disable_adapters()
                self.reference_unet = ref.requires_grad_(False).eval()
        if not self._fast_applied:
            self.fast.apply_policy(self.policy.unet)
            if self.objective.requires_reference:
                separate = self.resolved_reference_mode == "copy"
                self.fast.apply_reference(self.reference_unet, separate)
            self._fast_applied = True

    @property
    def resolved_reference_mode(self) -> Literal["copy", "adapters_off"]:
        """``copy`` or ``adapters_off`` after resolving ``auto``."""
        if self.reference_mode == "auto":
            return "adapters_off" if self.policy.is_lora else "copy"
        if self.reference_mode == "adapters_off" and not self.policy.is_lora:
            raise ConfigError("reference='adapters_off' needs a LoRA policy: set lora_rank")
        return self.reference_mode

    def reference_predict(self, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The frozen reference's prediction for the same inputs as the policy (no gradient).

        Under ``fast.reference_dtype`` the inputs are cast to it and the output back to ``x_t``'s
        dtype; under ``fast.reference_inference_mode`` the output is cloned out of inference mode.
        """
        if not self.fast.reference_inference_mode:
            with torch.no_grad():
                return self._reference_forward(x_t, timesteps, prompt_embeds)
        with torch.inference_mode():
            out = self._reference_forward(x_t, timesteps, prompt_embeds)
        return out.clone()

    def _reference_forward(self, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        if self.resolved_reference_mode == "copy":
            assert self.reference_unet is not None, "configure_model() was not called"
            dtype = self.fast.reference_torch_dtype
            if dtype is None:
                return self.policy.unet_forward(self.reference_unet, x_t, timesteps, prompt_embeds)
            out = self.policy.unet_forward(
                self.reference_unet, x_t.to(dtype), timesteps, prompt_embeds.to(dtype)
            )
            return out.to(x_t.dtype)
        with self.policy.adapters_disabled():
            return self.policy(x_t, timesteps, prompt_embeds)

    # ------------------------------------------------------------------ randomness
    def step_generator(self, stage: str, batch_idx: int) -> torch.Generator:
        """A generator seeded by (seed, stage, epoch, batch, rank); validation ignores the epoch."""
        epoch = self.current_epoch if stage == "train" else 0
        key = f"{self.seed}/{stage}/{epoch}/{batch_idx}/{self.global_rank}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample_noise(
        self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype
    ) -> Tensor:
        """A standard-normal draw for forward noising (one place, so tests can pin it)."""
        return torch.randn(shape, generator=generator, device=self.device, dtype=dtype)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Trainable parameters only: no reference, no frozen VAE or text encoder."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        keep = {prefix + n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in keep}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record counters that are not weights."""
        checkpoint["lightning_pref"] = {"rows_skipped": self.rows_skipped}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints that do not match the trainable weights of this model."""
        self.rows_skipped = checkpoint.get("lightning_pref", {}).get("rows_skipped", 0)
        if "state_dict" not in checkpoint:
            return  # a sharded checkpoint (FSDP, DeepSpeed): the strategy loads the weights itself
        saved = set(checkpoint["state_dict"])
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = expected - saved, saved - expected
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise ConfigError(
                f"checkpoint does not match this model's trainable weights ({len(missing)} "
                f"missing, {len(unexpected)} unexpected, e.g. '{example}'): was it trained with "
                "another policy or LoRA setting?"
            )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimizer over trainable parameters, with the LR schedule stepped per step."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters")
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def log_output(self, stage: str, out: ObjectiveOutput, batch_size: int) -> None:
        """Log ``{stage}/loss`` and the objective's metrics (loss and accuracy in the bar)."""
        on_step = stage == "train"
        values = {"loss": out.loss.detach(), **out.metrics}
        for key, value in values.items():
            self.log(
                f"{stage}/{key}",
                value,
                prog_bar=key in ("loss", "implicit_acc"),
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=batch_size,
                sync_dist=not on_step,
            )
