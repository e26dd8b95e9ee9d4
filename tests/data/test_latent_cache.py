"""The latent + text-embedding cache: built once by a command, read by a DataModule, and training
from it gives the same loss as encoding on the fly for a fixed seed."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Trainer

from lightning_pref.__main__ import main
from lightning_pref.data import (
    CachedPairDataModule,
    CachedPairs,
    PickAPicDataModule,
    build_latent_cache,
    write_fake_pickapic,
)
from lightning_pref.data.latent_cache import collate_cached, sample_posterior
from lightning_pref.data.pairs import PairCollate
from lightning_pref.errors import ConfigError, DataError
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import SFT, DiffusionDPO
from lightning_pref.types import LatentPairBatch

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "tests" / "configs" / "tiny_dpo.yaml"
TRAIN = ROOT / "tests" / "assets" / "pickapic_tiny" / "train"


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory):
    """The training split of tests/configs/tiny_dpo.yaml (one corrupt row), cached by the CLI."""
    out = tmp_path_factory.mktemp("cache") / "train"
    main(["cache-latents", "--config", str(CONFIG), "--out", str(out), "--batch_size", "5",
          "--shard_size", "16"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def clean_train(tmp_path_factory):
    """Fake Pick-a-Pic training shards without corrupt rows, so cache rows line up one to one."""
    root = tmp_path_factory.mktemp("clean")
    write_fake_pickapic(root, {"train": 24}, image_size=16, seed=3)
    return root / "train"


@pytest.fixture(scope="module")
def cache_dir(clean_train, tmp_path_factory):
    """``clean_train`` cached with the tiny model of ``module()``."""
    out = tmp_path_factory.mktemp("cache") / "clean"
    policy = TinyDiffusionPolicy(sample_size=8, seed=0)
    policy.build()
    build_latent_cache(policy, image_data(clean_train).train_set, out, 16, batch_size=5,
                       progress=False)  # fmt: skip
    return out


def image_data(train=TRAIN) -> PickAPicDataModule:
    """Pairs read as images without flips, crops or caption dropout."""
    data = PickAPicDataModule(
        train_files=str(train), resolution=16, hflip=False, proportion_empty_prompts=0.0,
        batch_size=4, seed=0,
    )  # fmt: skip
    data.setup("fit")
    return data


def module(objective=None) -> OfflinePairModule:
    m = OfflinePairModule(
        TinyDiffusionPolicy(sample_size=8, seed=0), objective or DiffusionDPO(beta=5000.0),
        optimizer=partial(torch.optim.SGD, lr=1e-2), seed=0,
    )  # fmt: skip
    m.configure_model()
    return m


def test_cli_writes_shards_captions_and_counts_the_corrupt_row(cli_cache):
    """tiny_dpo's 64 rows: 8 ties dropped, one undecodable row skipped and counted, 55 cached.
    A shard is written once 16 pairs are buffered, in whole batches of 5: 5+5+5+4 (the batch with
    the corrupt row) = 19, then 20, then the remaining 16."""
    manifest = json.loads((cli_cache / "manifest.json").read_text())
    assert len(image_data().train_set) == 56
    assert (manifest["num_pairs"], manifest["rows_skipped"]) == (55, 1)
    assert manifest["proportion_empty_prompts"] == 0.2  # tiny_dpo's data module (the default)
    data = CachedPairDataModule(str(cli_cache), batch_size=2)
    data.setup("fit")
    assert data.train_set.proportion_empty_prompts == 0.2
    assert [s["rows"] for s in manifest["shards"]] == [19, 20, 16]
    captions = json.loads((cli_cache / "captions.json").read_text())
    assert captions[0] == "" and len(captions) == manifest["num_captions"]
    assert len(CachedPairs(cli_cache)) == 55


def test_posterior_draw_equals_the_vae_sample():
    """mean + std * eps with the generator's next randn is diffusers' ``latent_dist.sample``."""
    policy = TinyDiffusionPolicy(sample_size=8, seed=0)
    policy.build()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    dist = policy.vae.encode(pixels).latent_dist
    expected = dist.sample(torch.Generator().manual_seed(7)) * policy.vae.config.scaling_factor
    got = sample_posterior(dist.mean, dist.std, policy.vae.config.scaling_factor,
                           torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.equal(got, expected)
    assert torch.equal(sample_posterior(pixels, None, 1.0, torch.Generator()), pixels)


@pytest.mark.parametrize("objective", [DiffusionDPO(beta=5000.0), SFT()], ids=["dpo", "sft"])
def test_cached_batch_gives_the_on_the_fly_loss(cache_dir, clean_train, objective):
    """Same rows, same seed and batch index: the cached path draws the same posterior sample and
    reads the same embeddings, so every latent, the noise, and the loss agree."""
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["rows_skipped"] == 0  # rows line up one to one
    images, cached = image_data(clean_train).train_set, CachedPairs(cache_dir)
    rows = [0, 3, 5, 9]
    image_batch = PairCollate(16)([images[i] for i in rows])
    cached_batch = collate_cached([cached[i] for i in rows])
    m = module(objective)
    gen_a, gen_b = m.step_generator("train", 2), m.step_generator("train", 2)
    a, b = m.to_latents(image_batch, gen_a), m.to_latents(cached_batch, gen_b)
    torch.testing.assert_close(b.latents_w, a.latents_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.prompt_embeds, a.prompt_embeds, rtol=0, atol=0)
    loss_a = m.shared_step(image_batch, "train", 2).loss
    loss_b = m.shared_step(cached_batch, "train", 2).loss
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)


class _Losses:
    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def _fit_losses(data, steps: int = 3) -> tuple[list[float], torch.Tensor]:
    from lightning import Callback

    losses = _Losses()
    callback = type("Rec", (Callback,), {"on_train_batch_end": lambda self, *a: losses(*a)})()
    m = module()
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(m, data)
    return losses.values, torch.cat([p.flatten() for p in m.policy.unet.parameters()])


def test_training_from_the_cache_matches_training_on_images(cache_dir, clean_train):
    """Three optimizer steps through the Trainer: the same shuffled pairs, the same loss every
    step, and the same final weights (which moved)."""
    cached = CachedPairDataModule(str(cache_dir), batch_size=4, proportion_empty_prompts=0.0,
                                  seed=0)  # fmt: skip
    image_losses, image_weights = _fit_losses(image_data(clean_train))
    cached_losses, cached_weights = _fit_losses(cached)
    torch.testing.assert_close(cached_losses, image_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached_weights, image_weights, rtol=1e-5, atol=1e-6)
    start = torch.cat([p.flatten() for p in module().policy.unet.parameters()])
    assert not torch.equal(cached_weights, start)


def test_caption_dropout_reads_the_empty_embedding(cache_dir):
    everything, nothing = CachedPairs(cache_dir, 1.0, seed=0), CachedPairs(cache_dir, 0.0, seed=0)
    empty = TinyDiffusionPolicy(sample_size=8, seed=0)
    empty.build()
    e = empty.encode_prompt([""])[0]
    assert all(torch.equal(everything[i]["embeds"], e) for i in range(4))
    assert not any(torch.equal(nothing[i]["embeds"], e) for i in range(4))


def test_a_cache_for_another_model_is_refused(cache_dir):
    m = OfflinePairModule(TinyDiffusionPolicy(sample_size=8, cross_attention_dim=32, seed=0),
                          DiffusionDPO())  # fmt: skip
    m.configure_model()
    batch = collate_cached([CachedPairs(cache_dir)[i] for i in range(2)])
    assert isinstance(batch, LatentPairBatch)
    with pytest.raises(ConfigError, match="rebuild it with"):
        m.shared_step(batch, "train", 0)


def test_not_a_cache_is_named(tmp_path):
    with pytest.raises(DataError, match="not a latent cache"):
        CachedPairs(tmp_path)


def test_flow_cache_gives_the_on_the_fly_loss(clean_train, tmp_path):
    """On the tiny SD3 flow model (VAE with shift_factor 0.0609) the cached posterior draw
    ``(mean + std ε − shift) · scale`` gives the same latents, embeddings and DPO loss as
    encoding the images."""
    from lightning_pref.models import TinyFlowPolicy

    policy = TinyFlowPolicy(sample_size=8, seed=0)
    policy.build()
    out = tmp_path / "flow"
    build_latent_cache(policy, image_data(clean_train).train_set, out, 16, batch_size=5,
                       progress=False)  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["shift_factor"] == pytest.approx(0.0609)
    images, cached = image_data(clean_train).train_set, CachedPairs(out)
    rows = [0, 3, 5, 9]
    image_batch = PairCollate(16)([images[i] for i in rows])
    cached_batch = collate_cached([cached[i] for i in rows])
    m = OfflinePairModule(TinyFlowPolicy(sample_size=8, seed=0, lora_rank=4), DiffusionDPO(100.0))
    torch.manual_seed(0)
    m.configure_model()
    a = m.to_latents(image_batch, m.step_generator("train", 2))
    b = m.to_latents(cached_batch, m.step_generator("train", 2))
    torch.testing.assert_close(b.latents_w, a.latents_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.prompt_embeds, a.prompt_embeds, rtol=0, atol=0)
    loss_a = m.shared_step(image_batch, "train", 2).loss
    loss_b = m.shared_step(cached_batch, "train", 2).loss
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
