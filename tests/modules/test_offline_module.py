from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pref.data import PickAPicDataModule
from lightning_pref.errors import ConfigError
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import SFT, DiffusionDPO
from lightning_pref.training.optim import ConstantWithWarmup

ASSETS = Path(__file__).parents[1] / "assets" / "pickapic_tiny"


def make_module(lora_rank=None, objective=None, reference="auto"):
    return OfflinePairModule(
        TinyDiffusionPolicy(seed=0, lora_rank=lora_rank),
        objective or DiffusionDPO(beta=5000.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        lr_scheduler=partial(ConstantWithWarmup, warmup_steps=4),
        reference=reference,
    )


def test_policy_equals_reference_at_start_gives_log2(image_pair_batch):
    module = make_module()
    module.configure_model()
    out = module.shared_step(image_pair_batch, "train", 0)
    assert out.loss.item() == pytest.approx(0.6931471805599453, abs=1e-6)
    assert out.metrics["model_mse_w"] == out.metrics["ref_mse_w"]


def test_full_checkpoint_holds_unet_only():
    module = make_module()
    module.configure_model()
    keys = set(module.state_dict())
    assert keys and all(k.startswith("policy.unet.") for k in keys)
    assert len(keys) == len(list(module.policy.unet.parameters()))
    assert module.reference_unet is not None  # exists, but is not saved


def test_lora_checkpoint_holds_adapters_only():
    module = make_module(lora_rank=4)
    module.configure_model()
    assert module.resolved_reference_mode == "adapters_off"
    assert module.reference_unet is None
    keys = set(module.state_dict())
    assert keys and all("lora_" in k for k in keys)
    lora_numel = sum(module.state_dict()[k].numel() for k in keys)
    assert lora_numel < 0.2 * sum(p.numel() for p in module.policy.unet.parameters())


def test_sft_builds_no_reference():
    module = make_module(objective=SFT())
    module.configure_model()
    assert module.reference_unet is None


def test_adapters_off_without_lora_is_a_config_error():
    module = make_module(reference="adapters_off")
    with pytest.raises(ConfigError, match="lora_rank"):
        module.configure_model()
        _ = module.resolved_reference_mode


def test_mismatched_checkpoint_is_refused():
    full = make_module()
    full.configure_model()
    lora = make_module(lora_rank=4)
    lora.configure_model()
    with pytest.raises(ConfigError, match="does not match"):
        lora.on_load_checkpoint({"state_dict": full.state_dict()})


def _fit(root: Path, max_steps: int, ckpt_path=None):
    seed_everything(0)
    module = make_module()
    data = PickAPicDataModule(train_files=str(ASSETS / "train"), resolution=16, batch_size=4)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


def test_resume_matches_uninterrupted_run(tmp_path):
    """3 steps, stop, resume to 16 (crossing the epoch boundary at 13) == 16 straight steps."""
    ref_trainer, ref_module = _fit(tmp_path / "a", 16)
    _fit(tmp_path / "b", 3)
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert not any(
        k.startswith(("reference", "policy.vae", "policy.text")) for k in ckpt["state_dict"]
    )
    trainer, module = _fit(tmp_path / "b", 16, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == ref_trainer.global_step == 16
    assert trainer.current_epoch == ref_trainer.current_epoch
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == ref_trainer.optimizers[0].param_groups[0]["lr"] == 1e-3
    state, ref_state = trainer.optimizers[0].state_dict(), ref_trainer.optimizers[0].state_dict()
    for idx, entry in ref_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(state["state"][idx][key], value), (idx, key)
    for (name, p), (_, q) in zip(
        module.state_dict().items(), ref_module.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_lr_schedules_by_hand():
    """ConstantWithWarmup(4): 0, 1/4, 2/4, 3/4, 1, 1. WarmupCosine(total 6, warmup 2, floor 0.1):
    0, 1/2, then 0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2 for k = 0..4 -> 1, 0.8682, 0.55, 0.2318, 0.1.
    """
    from lightning_pref.training.optim import WarmupCosine

    def lrs(make, n):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(partial(ConstantWithWarmup, warmup_steps=4), 6) == [0, 0.25, 0.5, 0.75, 1, 1]
    got = lrs(partial(WarmupCosine, total_steps=6, warmup_steps=2, floor=0.1), 8)
    expected = [0, 0.5, 1, 0.8681981, 0.55, 0.2318019, 0.1, 0.1]
    assert got == pytest.approx(expected, abs=1e-6)


def test_step_progress_bar_spans_the_run_across_epochs(tmp_path):
    from lightning_pref.callbacks import StepProgressBar

    bar = StepProgressBar()
    data = PickAPicDataModule(train_files=str(ASSETS / "train"), resolution=16, batch_size=4)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=16,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[bar],
        enable_model_summary=False,
    )
    trainer.fit(make_module(), data)
    assert trainer.current_epoch >= 1  # 13 batches an epoch: the run crossed an epoch boundary
    assert bar.train_progress_bar.total == 16 and bar.train_progress_bar.n == 16
    assert float(bar.get_metrics(trainer, trainer.lightning_module)["pairs/s"]) > 0
