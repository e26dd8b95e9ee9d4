"""EMA (arithmetic, exact resume, evaluation loads it) and SampleGrid (TensorBoard images)."""

from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_pref.callbacks import EMA, SampleGrid
from lightning_pref.callbacks.ema import ema_state_from_checkpoint
from lightning_pref.data import PickAPicDataModule
from lightning_pref.errors import ConfigError
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO

ASSETS = Path(__file__).parents[1] / "assets" / "pickapic_tiny"


class RecordWeights(Callback):
    """The trainable weights after every optimizer step."""

    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        params = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.history.append(params)


def fit(max_steps, callbacks, ckpt_path=None, logger=False):
    module = OfflinePairModule(
        TinyDiffusionPolicy(seed=0),
        DiffusionDPO(beta=5000.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    data = PickAPicDataModule(
        train_files=str(ASSETS / "train"), val_files=str(ASSETS / "validation_unique"),
        resolution=16, batch_size=4,
    )  # fmt: skip
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = Trainer(
        accelerator="cpu", max_steps=max_steps, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False,
        callbacks=callbacks, enable_checkpointing=checkpointing,
    )  # fmt: skip
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module


def test_ema_is_the_exponential_average_of_the_steps():
    """decay 0.5: after step 1 ema = w1; after step 2 ema = (w1 + w2) / 2; after step 3
    ema = ((w1 + w2) / 2 + w3) / 2 = w1/4 + w2/4 + w3/2."""
    ema, record = EMA(decay=0.5), RecordWeights()
    fit(3, [record, ema])
    w1, w2, w3 = record.history
    for name, value in ema.ema.items():
        expected = w1[name] / 4 + w2[name] / 4 + w3[name] / 2
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    moved = [n for n in w1 if not torch.equal(w1[n], w3[n])]
    assert moved and not torch.equal(ema.ema[moved[0]], w3[moved[0]])


def test_ema_resumes_exactly(tmp_path):
    straight = EMA(decay=0.9)
    fit(6, [straight])
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    fit(3, [EMA(decay=0.9), ckpt])
    resumed = EMA(decay=0.9)
    fit(6, [resumed], ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed._step == straight._step == 6
    for name, value in straight.ema.items():
        assert torch.equal(value, resumed.ema[name]), name


def test_evaluation_loads_the_ema_weights(tmp_path, monkeypatch):
    from lightning_pref.__main__ import main
    from lightning_pref.runs import find_run, load_module

    monkeypatch.chdir(Path(__file__).parents[2])
    main(
        [
            "fit", "--config", "tests/configs/tiny_dpo.yaml", "--trainer.max_steps", "3",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            '--trainer.callbacks+={"class_path": "lightning_pref.callbacks.EMA", '
            '"init_args": {"decay": 0.5}}',
        ]
    )  # fmt: skip
    run = find_run(tmp_path / "tiny_dpo" / "version_0")
    averaged = ema_state_from_checkpoint(torch.load(run.ckpt, weights_only=True))
    module = load_module(run.config, run.ckpt, ema=True)
    plain = load_module(run.config, run.ckpt)
    params = dict(module.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in averaged.items())
    assert any(not torch.equal(p, params[n]) for n, p in plain.named_parameters())

    ckpt = tmp_path / "no_ema.ckpt"
    checkpoint = torch.load(run.ckpt, weights_only=True)
    checkpoint["callbacks"] = {}
    torch.save(checkpoint, ckpt)
    with pytest.raises(ConfigError, match="no EMA weights"):
        load_module(run.config, ckpt, ema=True)


def test_ema_refuses_a_bad_decay():
    with pytest.raises(ConfigError, match="decay"):
        EMA(decay=1.0)


def test_sample_grid_logs_fixed_prompts_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = SampleGrid(every_n_steps=2, num_steps=2, max_prompts=3)
    fit(4, [grid], logger=TensorBoardLogger(tmp_path, name="grid"))
    acc = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*"))), {"images": 0})
    acc.Reload()
    images = acc.Images("samples/grid")
    assert [e.step for e in images] == [0, 2, 4]
    assert len(grid.prompts) == 3  # the first validation batch's captions
    assert images[0].width == 3 * (16 * 4 + 2) + 2 and images[0].height == 16 * 4 + 4
    assert images[0].encoded_image_string != images[-1].encoded_image_string  # the model trained


def test_sample_grid_leaves_training_unchanged(tmp_path):
    """Sampling draws from its own generators and a fresh validation loader."""
    grid = SampleGrid(every_n_steps=2, num_steps=2, max_prompts=2)
    with_grid = fit(4, [grid], logger=TensorBoardLogger(tmp_path, name="grid"))
    without = fit(4, [])
    for (name, p), (_, q) in zip(
        with_grid.state_dict().items(), without.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
