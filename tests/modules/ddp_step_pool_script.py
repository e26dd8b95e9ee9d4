"""Run by test_online_ddp.py in a subprocess: SPO on a tiny policy with 2 CPU processes (gloo)."""

import sys

import torch
from lightning import Callback, Trainer

from lightning_pref.data import PromptDataModule, StepPoolSampler
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import StepPoolModule
from lightning_pref.objectives import SPO
from lightning_pref.scoring.base import Scorer

PROMPTS = [f"prompt number {i}" for i in range(8)]


class Brightness(Scorer):
    """Toy reward: 10 × mean pixel value."""

    def forward(self, images, captions, timesteps=None):
        return images.mean(dim=(1, 2, 3)) * 10


class Record(Callback):
    """Each rank saves what it saw: its prompts, pool sizes and final weights."""

    def __init__(self, out: str) -> None:
        self.out, self.prompts, self.pools = out, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.prompts += batch.captions
        self.pools.append(float(trainer.callback_metrics["train/pool_valid_frac"]))

    def on_train_end(self, trainer, module):
        weights = {k: v.detach().clone() for k, v in module.policy.unet.state_dict().items()}
        record = {"prompts": self.prompts, "pools": self.pools, "step": trainer.global_step}
        torch.save(record | {"weights": weights}, f"{self.out}/rank{trainer.global_rank}.pt")


def main(out: str) -> None:
    torch.set_num_threads(1)
    pool = StepPoolSampler(Brightness(), num_candidates=3, threshold=0.002, num_steps=5)
    module = StepPoolModule(TinyDiffusionPolicy(sample_size=8, seed=0), SPO(), pool)
    module.train_batch_size = 2
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[Record(out)],
    )
    trainer.fit(module, PromptDataModule(train_prompts=PROMPTS, batch_size=2))


if __name__ == "__main__":
    main(sys.argv[1])
