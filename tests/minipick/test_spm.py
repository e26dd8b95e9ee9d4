"""Step-aware MiniPickScore (SPO's SPM): init = proxy, timestep dependence, x̂0 draws, training."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import lightning_pref.minipick.assets as assets_module
from lightning_pref.__main__ import main
from lightning_pref.minipick import (
    GoldRater,
    MiniPickAssets,
    MiniPickScore,
    MiniPickSPM,
    PreferencePairs,
    ProxyConfig,
    SPMConfig,
    SPMObjective,
    StepAwareMiniPickScore,
    caption,
    fit_proxy,
    imperfect_render,
    label_pairs,
    predict_x0,
    sample_scenes,
    train_spm,
)
from lightning_pref.minipick.model import build_minipick_components
from lightning_pref.minipick.spm_data import sample_examples
from lightning_pref.minipick.spm_train import ScoredPair
from lightning_pref.minipick.store import MANIFEST, ensure_asset, is_complete
from lightning_pref.models import DiffusionPolicy
from lightning_pref.scoring import Scorer

TOWERS = ProxyConfig(channels=(8, 16), embed_dim=16, text_width=16, seed=2)
CAPTIONS = ["a large red circle on the left", "a small blue cross at the top"] * 2


def make_pairs(n: int, split: str, seed: int) -> PreferencePairs:
    """Two imperfect renders per prompt, labelled by the gold rater (noisy labels, some ties)."""
    specs = [s.spec for s in sample_scenes(n, seed, split)]
    images_0, images_1 = (
        imperfect_render(specs, 2 * seed + 1),
        imperfect_render(specs, 2 * seed + 2),
    )
    captions = [caption(s) for s in specs]
    rater = GoldRater()
    s0, s1 = rater.score(images_0, captions), rater.score(images_1, captions)
    label_0, _ = label_pairs(s0, s1, torch.Generator().manual_seed(seed))
    return PreferencePairs(images_0, images_1, captions, label_0)


def _png(image: torch.Tensor) -> bytes:
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pairs(folder, splits: dict[str, PreferencePairs]) -> dict:
    for split, pairs in splits.items():
        (folder / split).mkdir(parents=True)
        table = pa.table(
            {
                "caption": pairs.captions,
                "jpg_0": [_png(x) for x in pairs.images_0],
                "jpg_1": [_png(x) for x in pairs.images_1],
                "label_0": pairs.label_0.double().tolist(),
                "label_1": (1.0 - pairs.label_0).double().tolist(),
                "num_example_per_prompt": [1] * len(pairs),
            }
        )
        pq.write_table(table, folder / split / f"{split}-00000-of-00001.parquet")
    return {}


def write_base(folder) -> dict:
    """A tiny untrained MiniPick model in SD layout (what pretraining would save)."""
    parts = build_minipick_components(image_size=16, block_out_channels=(16, 16), text_dim=16)
    parts.unet.save_pretrained(folder / "unet")
    parts.noise_scheduler.save_pretrained(folder / "scheduler")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    return {}


def write_proxy(folder, pairs: PreferencePairs) -> dict:
    proxy = MiniPickScore(TOWERS)
    fit_proxy(proxy, pairs, epochs=8, batch_pairs=16, lr=1e-2, clip_weight=0.0)
    proxy.save_pretrained(folder)
    return {}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Stand-in base, pairs and proxy assets under the default settings' folder names."""
    a = MiniPickAssets(tmp_path_factory.mktemp("minipick"))
    train, val = make_pairs(48, "train", 5), make_pairs(16, "validation", 6)
    ensure_asset(a.base_dir(build=False), write_base, "base model")
    splits = {"train": train, "validation": val}
    ensure_asset(a.pairs_dir(build=False), lambda tmp: write_pairs(tmp, splits), "pairs")
    ensure_asset(a.proxy_dir(build=False), lambda tmp: write_proxy(tmp, train), "proxy reward")
    return a


@pytest.fixture(scope="module")
def base(assets) -> DiffusionPolicy:
    policy = DiffusionPolicy(pretrained=str(assets.base_dir(build=False)))
    policy.build()
    return policy.eval()


def perturbed(seed: int = 0) -> StepAwareMiniPickScore:
    model = StepAwareMiniPickScore(SPMConfig(proxy=TOWERS, time_dim=32))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (*model.block_modulation, model.pooled_modulation):
            head[1].weight.copy_(torch.randn(head[1].weight.shape, generator=gen) * 0.5)
    return model


def test_at_init_the_spm_is_the_proxy_at_every_timestep():
    """Zero-initialised modulation: h * (1 + 0) + 0 = h exactly, so the scores are bit-equal."""
    proxy = MiniPickScore(TOWERS)
    with torch.no_grad():
        proxy.logit_scale.fill_(2.0)
    spm = StepAwareMiniPickScore.from_proxy(proxy)
    assert isinstance(spm, Scorer) and spm.config.proxy == TOWERS
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = proxy(images, CAPTIONS)  # [4]
        for t in (None, torch.tensor(0), torch.tensor([0, 251, 701, 999]), torch.tensor(999.0)):
            assert_close(spm(images, CAPTIONS, t), expected, rtol=0, atol=0)
        ids = spm.tokenize(CAPTIONS)
        assert_close(spm.similarity(images, ids, t), proxy.similarity(images, ids), rtol=0, atol=0)
        assert spm(images.repeat(1, 1, 2, 2), CAPTIONS).shape == (4,)  # 32 px is resized


def test_scores_depend_on_the_timestep_once_the_modulation_moves():
    model = perturbed().eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        at_0, at_900 = (
            model(images, CAPTIONS, torch.tensor(0)),
            model(images, CAPTIONS, torch.tensor(900)),
        )
        assert not torch.allclose(at_0, at_900, atol=1e-3)
        assert_close(model(images, CAPTIONS), at_0, rtol=0, atol=0)  # None = t 0
        mixed = model(images, CAPTIONS, torch.tensor([0, 900, 0, 900]))  # per-image timesteps
        assert_close(mixed, torch.stack([at_0[0], at_900[1], at_0[2], at_900[3]]))
    with pytest.raises(ValueError, match="captions"):
        model(images, CAPTIONS[:1])


def test_save_load_round_trip(tmp_path):
    model = perturbed(seed=3)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = StepAwareMiniPickScore.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    t = torch.tensor([5, 300, 600, 990])
    with torch.no_grad():
        assert_close(loaded(images, CAPTIONS, t), model(images, CAPTIONS, t), rtol=0, atol=0)


def test_scorer_wrapper_loads_at_init_and_passes_image_gradients(tmp_path):
    perturbed(seed=4).save_pretrained(tmp_path)
    scorer = MiniPickSPM(pretrained=str(tmp_path))
    assert scorer.model is not None  # loaded before any training step
    images = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    scores = scorer(images, CAPTIONS, torch.tensor([0, 100, 500, 900]))
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in scorer.parameters())
    assert not scorer.train().model.training  # stays in eval mode


def test_spm_objective_exact_value():
    """PickScore's CE on the diagonal scores; ties 0.5/0.5 with +log 0.5; weights normalised.

    logits rows = captions, columns = [x̂0 of images 0; x̂0 of images 1] (B = 3):
    diagonals s0 = (2, 2, 1), s1 = (0, 0, -1); labels (1, 0, 0.5); weights (1, 0, 3).
    pair 0: log(1 + e^-2) = 0.126928; pair 2 (tie): 0.5 (0.126928 + 2.126928) - log 2 = 0.433781.
    loss = (0.126928 + 3 * 0.433781) / 4 = 0.357068. Accuracy over non-ties: pair 0 right,
    pair 1 wrong -> 0.5.
    """
    logits = torch.full((3, 6), 7.0)
    logits[range(3), range(3)] = torch.tensor([2.0, 2.0, 1.0])
    logits[range(3), range(3, 6)] = torch.tensor([0.0, 0.0, -1.0])
    pair = ScoredPair(
        logits,
        torch.tensor([[2, 5], [2, 6], [2, 7]]),
        torch.tensor([1.0, 0.0, 0.5]),
        torch.tensor([1.0, 0.0, 3.0]),
    )
    out = SPMObjective(clip_weight=0.0)(pair)
    assert_close(out.loss, torch.tensor(0.357068), rtol=0, atol=1e-6)
    assert_close(out.metrics["accuracy"], torch.tensor(0.5))
    assert not SPMObjective.requires_reference
    with_clip = SPMObjective(clip_weight=1.0)(pair)
    assert with_clip.loss > out.loss  # the off-diagonal 7s are strong negatives


def test_draws_are_seeded_stratified_and_share_one_noise_per_pair(base):
    """Same seed, same (t, ε); each example holds ONE ε that noises both images of its pair."""
    pairs = make_pairs(8, "train", 7)
    a, b = sample_examples(pairs, 4, seed=3), sample_examples(pairs, 4, seed=3)
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.noise, b.noise)
    assert not torch.equal(a.noise, sample_examples(pairs, 4, seed=4).noise)
    assert a.noise.shape == (32, 3, 16, 16)  # one ε per (pair, draw), not per image
    strata = (a.timesteps.view(8, 4) // 250).tolist()
    assert strata == [[0, 1, 2, 3]] * 8  # draw k lies in [250 k, 250 (k + 1))
    batch = a.batch([0, 5, 9])
    assert batch.key.tolist() == [0, 5, 9] and batch.captions[1] == pairs.captions[1]
    x0_0, x0_1 = predict_x0(base, batch)
    again = predict_x0(base, batch)
    assert torch.equal(x0_0, again[0]) and torch.equal(x0_1, again[1])
    assert x0_0.abs().max() <= 1.0  # clip_sample clamps x̂0
    # by hand: x_t = sqrt(ā) x0 + sqrt(1 - ā) ε with the batch's single ε for each image
    a_t = base.alphas_cumprod[batch.timesteps].view(-1, 1, 1, 1)
    for images, x0_hat in ((batch.images_0, x0_0), (batch.images_1, x0_1)):
        x_t = a_t.sqrt() * images + (1 - a_t).sqrt() * batch.noise
        with torch.no_grad():
            cond, uncond = base.encode_prompt(batch.captions), base.encode_prompt([""] * 3)
            eps_u, eps_c = base(x_t, batch.timesteps, uncond), base(x_t, batch.timesteps, cond)
        eps = eps_u + 5.0 * (eps_c - eps_u)
        by_hand = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        assert_close(x0_hat, by_hand, rtol=1e-4, atol=1e-4)
    twin = a.batch([0])
    twin.images_1 = twin.images_0.clone()  # identical images + shared ε -> identical x̂0
    x0_0, x0_1 = predict_x0(base, twin)
    assert torch.equal(x0_0, x0_1)


def test_tiny_training_beats_chance_and_exports(assets, tmp_path):
    info = train_spm(
        assets.base_dir(build=False),
        assets.pairs_dir(build=False),
        assets.proxy_dir(build=False),
        tmp_path,
        assets.settings,
        max_steps=24,
        draws_per_pair=2,
    )
    assert info["train_pairs"] == 48 and info["val_pairs"] == 16
    assert set(info["val_accuracy"]) == {"0", "251", "501", "701", "951"}
    assert info["train_epoch_accuracy"] > 0.6  # its own pairs (a proxy fit on them starts it)
    model = StepAwareMiniPickScore.from_pretrained(tmp_path)
    proxy = MiniPickScore.from_pretrained(assets.proxy_dir(build=False))
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():  # trained: no longer the proxy, and step-aware
        assert not torch.allclose(model(images, CAPTIONS), proxy(images, CAPTIONS))
        assert not torch.allclose(
            model(images, CAPTIONS, torch.tensor(0)), model(images, CAPTIONS, torch.tensor(900))
        )


def test_spm_dir_builds_once_and_the_scorer_loads_it(assets, monkeypatch):
    calls, original = [], assets_module.train_spm

    def quick(*args, **kwargs):
        calls.append(1)
        return original(*args, max_steps=4, draws_per_pair=1)

    monkeypatch.setattr(assets_module, "train_spm", quick)  # the builder assets.py calls
    folder = assets.spm_dir()
    assert folder.name.startswith("spm-") and is_complete(folder) and assets.spm_dir() == folder
    assert len(calls) == 1  # complete: reused
    info = json.loads((folder / MANIFEST).read_text())["info"]
    assert info["max_steps"] == 4 and math.isfinite(info["seconds"])
    scorer = MiniPickSPM(str(assets.root))
    with torch.no_grad():
        assert scorer(torch.zeros(4, 3, 16, 16), CAPTIONS).shape == (4,)
    assert len(calls) == 1


def test_yaml_trains_and_exports_through_the_cli(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(assets.root)
    main(
        [
            "fit",
            "--config",
            str(Path(__file__).parents[2] / "experiments" / "spm_minipick.yaml"),
            f"--model.init_args.policy.init_args.data_dir={root}",
            "--trainer.max_steps=3",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.draws_per_pair=1",
            "--data.init_args.batch_size=16",
        ]
    )
    exported = sorted(tmp_path.glob("runs/spm_minipick/version_*/spm"))
    assert len(exported) == 1
    model = StepAwareMiniPickScore.from_pretrained(exported[0])
    assert model.config.proxy == TOWERS
