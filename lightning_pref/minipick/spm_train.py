"""Training the step-aware MiniPick preference model (SPO's SPM, METHODS §2.2) with our Trainer.

:class:`SPMTrainingModule` scores both x̂0 of each (pair, t, ε) draw of :mod:`.spm_data` at t with
:class:`~lightning_pref.minipick.spm.StepAwareMiniPickScore` and applies :class:`SPMObjective`,
PickScore's 2-way cross-entropy against ``[label_0, label_1]`` (SPO's ``spm_criterion.py``). The
frozen base UNet runs once per draw; the module caches x̂0 and later epochs train the scorer on
the cached tensors. The same data module and module serve ``experiments/spm_minipick.yaml`` and
the cached asset (:func:`train_spm`, ``MiniPickAssets.spm_dir``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning import Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.minipick.proxy import MiniPickScore, caption_contrastive_loss, pickscore_loss
from lightning_pref.minipick.spm import StepAwareMiniPickScore
from lightning_pref.minipick.spm_data import (
    DRAWS_PER_PAIR,
    SPMBatch,
    SPMPairsDataModule,
    predict_x0,
)
from lightning_pref.minipick.store import AssetSettings
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.objectives.base import PreferenceObjective
from lightning_pref.types import ObjectiveOutput

__all__ = ["SPMObjective", "SPMTrainingModule", "ScoredPair", "train_spm"]

# Chosen on the 1024 benchmark pairs (train on 768 with a proxy fit on them; 256 held-out train +
# 128 validation pairs, mean accuracy over VAL_TIMESTEPS): the proxy itself scores 0.669; with 2
# draws per pair the SPM overfits (lr 5e-4: train 0.95, held-out 0.640; lr 1e-4: 0.672); 3 draws,
# lr 2e-4, 200 steps: 0.680; 4 draws: 0.680-0.690 but ~25 s more UNet time; the CLIP InfoNCE term
# of the proxy hurts here (0.593 at weight 0.5). Most of the gain is at t = 951 (0.58 -> 0.61).
# (DRAWS_PER_PAIR = 3 lives in spm_data.py.)
MAX_STEPS = 192  # 4 epochs of 48 batches (1024 pairs x 3 draws / 64)
LR = 2e-4
WEIGHT_DECAY = 1e-2
CLIP_WEIGHT = 0.0
TRAIN_SEED = 0


@dataclass(frozen=True)
class ScoredPair:
    """Step-aware scores of a batch of pairs (objective input)."""

    logits: Tensor  # [B, 2B] caption-by-image scores over [x̂0 of images 0; x̂0 of images 1]
    input_ids: Tensor  # [B, L] word ids of the captions
    label_0: Tensor  # [B]
    weights: Tensor  # [B]

    def pair_scores(self) -> tuple[Tensor, Tensor]:
        """``[B]`` scores of each pair's own caption against its first and second image."""
        b = self.input_ids.shape[0]
        return self.logits[:, :b].diagonal(), self.logits[:, b:].diagonal()

    def outcomes(self) -> tuple[Tensor, Tensor]:
        """``[B]`` agreement with the label (1, 0; a score tie 0.5) and ``[B]`` non-tie mask."""
        s0, s1 = self.pair_scores()
        right = torch.where(s0 == s1, 0.5, ((s0 > s1) == (self.label_0 > 0.5)).float())
        return right, self.label_0 != 0.5


class SPMObjective(PreferenceObjective):
    """SPO's SPM loss (``spm_criterion.py``): PickScore's 2-way CE on the step-aware scores.

    Ties are 0.5/0.5 with the official ``+log 0.5`` offset (a constant); examples are weighted by
    ``1 / num_example_per_prompt``, normalised. ``clip_weight`` adds MiniPickScore's caption
    InfoNCE (its stand-in for CLIP pretraining); SPO has no such term.

    Args:
        clip_weight: weight of :func:`~lightning_pref.minipick.proxy.caption_contrastive_loss`.
    """

    requires_reference = False

    def __init__(self, clip_weight: float = CLIP_WEIGHT) -> None:
        super().__init__()
        self.clip_weight = clip_weight

    def forward(self, pair: ScoredPair) -> ObjectiveOutput:
        """Loss plus ``accuracy`` on non-tie pairs (a score tie counts half)."""
        s0, s1 = pair.pair_scores()  # [B], [B]
        loss = pickscore_loss(s0, s1, pair.label_0, pair.weights)
        if self.clip_weight > 0:
            loss = loss + self.clip_weight * caption_contrastive_loss(pair.logits, pair.input_ids)
        right, decided = pair.outcomes()  # [B], [B]
        acc = right[decided].mean() if decided.any() else torch.tensor(float("nan"))
        return ObjectiveOutput(loss, {"accuracy": acc.detach()})


class SPMTrainingModule(PreferenceModule):
    """Trains :class:`StepAwareMiniPickScore` on x̂0 of the frozen base model (SPO's SPM task).

    The policy is the frozen base model (SPO's SPM trainer likewise holds SD's UNet): it predicts
    x̂0 once per example and the result is cached by example key, since it never changes (the
    keys are those of one data module: use a module with one data module). Only the scorer trains
    and enters checkpoints. At the end of training the scorer is exported with
    ``save_pretrained`` to ``export_dir`` (default ``<log_dir>/spm``).

    Args:
        policy: the frozen base model.
        objective: the SPM loss.
        proxy_dir: the MiniPickScore folder the towers start from; None: the proxy asset of
            ``data_dir``, which only :class:`~lightning_pref.minipick.cached.SPMModule` finds.
        data_dir: the MiniPick asset cache (read by ``SPMModule``).
        guidance_scale: CFG weight of the x̂0 prediction (SPO: 5).
        optimizer: optimizer factory over the scorer's parameters.
        lr_scheduler: optional LR-schedule factory, stepped every optimizer step.
        seed: seed of the per-step generators.
        export_dir: where the trained scorer is written; None = ``<log_dir>/spm``.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        objective: SPMObjective,
        proxy_dir: str | None = None,
        data_dir: str | None = None,
        guidance_scale: float = 5.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        seed: int = 0,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(policy, objective, optimizer, lr_scheduler, "auto", seed)
        self.proxy_dir, self.data_dir = proxy_dir, data_dir
        self.guidance_scale, self.export_dir = guidance_scale, export_dir
        self.scorer: StepAwareMiniPickScore | None = None
        self.x0_cache: dict[int, Tensor] = {}  # example key -> [2, 3, S, S]
        self.val_outcomes: list[tuple[Tensor, Tensor, Tensor]] = []
        self.val_accuracy: dict[int, float] = {}

    def configure_model(self) -> None:
        """Load and freeze the base model; start the scorer from the proxy."""
        super().configure_model()
        self.policy.requires_grad_(False).eval()
        if self.scorer is None:
            proxy = MiniPickScore.from_pretrained(self.proxy_path())
            self.scorer = StepAwareMiniPickScore.from_proxy(proxy).requires_grad_(True)

    def proxy_path(self) -> Path:
        """The MiniPickScore folder the scorer starts from."""
        if self.proxy_dir is None:
            raise ConfigError(
                "SPMTrainingModule needs proxy_dir (SPMModule finds the cached proxy)"
            )
        return Path(self.proxy_dir)

    def noisy_x0(self, batch: SPMBatch) -> tuple[Tensor, Tensor]:
        """Cached :func:`predict_x0` of the batch's examples (computed on first sight)."""
        keys = batch.key.tolist()
        todo = [i for i, k in enumerate(keys) if k not in self.x0_cache]
        if todo:
            part = batch.select(todo)
            x0_0, x0_1 = predict_x0(self.policy, part, self.guidance_scale)
            for j, i in enumerate(todo):
                self.x0_cache[keys[i]] = torch.stack([x0_0[j], x0_1[j]])
        both = torch.stack([self.x0_cache[k] for k in keys])  # [B, 2, 3, S, S]
        return both[:, 0], both[:, 1]

    def score(self, batch: SPMBatch) -> ScoredPair:
        """Step-aware scores of every caption against both x̂0 of every pair."""
        assert self.scorer is not None, "configure_model() was not called"
        x0_0, x0_1 = self.noisy_x0(batch)
        ids = self.scorer.tokenize(batch.captions)  # [B, L]
        both = torch.cat([x0_0, x0_1])  # [2B, 3, S, S]
        logits = self.scorer.similarity(both, ids, batch.timesteps.repeat(2))  # [B, 2B]
        return ScoredPair(logits, ids, batch.label_0, batch.weights)

    def training_step(self, batch: SPMBatch, batch_idx: int) -> Tensor:
        """One scorer update on cached x̂0."""
        out = self.objective(self.score(batch))
        self.log_output("train", out, len(batch.captions))
        self.log(
            "train/epoch_accuracy",
            out.metrics["accuracy"],
            on_epoch=True,
            on_step=False,
            batch_size=len(batch.captions),
        )
        return out.loss

    def validation_step(self, batch: SPMBatch, batch_idx: int) -> None:
        """Loss and per-timestep accuracy on the validation examples."""
        pair = self.score(batch)
        out = self.objective(pair)
        self.log_output("val", out, len(batch.captions))
        self.val_outcomes.append((batch.timesteps, *pair.outcomes()))

    def on_validation_epoch_end(self) -> None:
        """Log ``val/accuracy_t{t}`` for every validation timestep."""
        if not self.val_outcomes:
            return
        t, right, decided = (torch.cat(x) for x in zip(*self.val_outcomes, strict=True))
        self.val_outcomes.clear()
        for step in sorted(set(t.tolist())):
            keep = (t == step) & decided
            acc = right[keep].mean() if keep.any() else torch.tensor(float("nan"))
            self.val_accuracy[int(step)] = float(acc)
            self.log(f"val/accuracy_t{step}", acc.to(self.device), sync_dist=True, batch_size=1)

    def on_train_end(self) -> None:
        """Export the trained scorer (``config.json`` + ``model.safetensors``)."""
        if self.scorer is None or not self.trainer.is_global_zero:
            return
        folder = Path(self.export_dir or Path(self.trainer.log_dir or ".") / "spm")
        self.scorer.save_pretrained(folder)


def _build_module(
    base_dir: str | Path,
    proxy_dir: str | Path,
    out_dir: str | Path,
    settings: AssetSettings,
    steps: int,
) -> SPMTrainingModule:
    from lightning_pref.training.optim import WarmupCosine

    return SPMTrainingModule(
        DiffusionPolicy(pretrained=str(base_dir)),
        SPMObjective(CLIP_WEIGHT),
        proxy_dir=str(proxy_dir),
        guidance_scale=settings.guidance_scale,
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
        lr_scheduler=partial(WarmupCosine, total_steps=steps, warmup_steps=steps // 10),
        seed=TRAIN_SEED,
        export_dir=str(out_dir),
    )


def _build_trainer(max_steps: int) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        check_val_every_n_epoch=10**6,  # validated before and after training instead
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )


def train_spm(
    base_dir: str | Path,
    pairs_dir: str | Path,
    proxy_dir: str | Path,
    out_dir: str | Path,
    settings: AssetSettings,
    max_steps: int = MAX_STEPS,
    draws_per_pair: int = DRAWS_PER_PAIR,
) -> dict[str, Any]:
    """Train the SPM from the proxy on the ``train`` pairs and export it to ``out_dir``.

    Returns:
        Build info: validation accuracy per timestep of the proxy (the SPM at init) and of the
        trained SPM, the last epoch's training accuracy, counts and seconds.
    """
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and does not thrash
    try:
        module = _build_module(base_dir, proxy_dir, out_dir, settings, max_steps)
        data = SPMPairsDataModule(
            pairs_dir=str(pairs_dir),
            image_size=settings.image_size,
            draws_per_pair=draws_per_pair,
            seed=TRAIN_SEED,
        )
        trainer = _build_trainer(max_steps)
        trainer.validate(module, data, verbose=False)
        proxy_accuracy = dict(module.val_accuracy)
        trainer.fit(module, data)
        train_accuracy = float(trainer.callback_metrics["train/epoch_accuracy"])
        trainer.validate(module, data, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert data.train_examples is not None and data.val_examples is not None
    return {
        "val_accuracy": {str(t): a for t, a in module.val_accuracy.items()},
        "proxy_val_accuracy": {str(t): a for t, a in proxy_accuracy.items()},
        "train_epoch_accuracy": train_accuracy,
        "train_pairs": len(data.train_examples.pairs),
        "val_pairs": len(data.val_examples.pairs),
        "draws_per_pair": draws_per_pair,
        "max_steps": max_steps,
        "clip_weight": CLIP_WEIGHT,
        "seconds": round(time.perf_counter() - start, 1),
    }
