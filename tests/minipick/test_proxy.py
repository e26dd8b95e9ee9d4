"""MiniPickScore, MiniPick's proxy reward: score formula, PickScore loss, save/load, learning."""

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import lightning_pref.minipick.assets as assets_module
from lightning_pref.minipick import (
    AssetSettings,
    GoldRater,
    MiniPickAssets,
    MiniPickScore,
    PreferencePairs,
    ProxyConfig,
    caption,
    caption_contrastive_loss,
    evaluate_pairs,
    fit_proxy,
    imperfect_render,
    label_pairs,
    load_pairs,
    pickscore_loss,
    sample_scenes,
)
from lightning_pref.minipick.store import MANIFEST, ensure_asset, is_complete
from lightning_pref.scoring import Scorer

RATER = GoldRater()
CAPTIONS = ["a large red circle on the left", "a small blue cross at the top"]


def make_pairs(n: int, split: str, seed: int) -> PreferencePairs:
    """Two imperfect renders per prompt of ``split``, labelled by the gold rater (noisy, ties)."""
    specs = [s.spec for s in sample_scenes(n, seed, split)]
    captions = [caption(s) for s in specs]
    images_0 = imperfect_render(specs, 2 * seed + 1)  # [n, 3, 16, 16]
    images_1 = imperfect_render(specs, 2 * seed + 2)
    s0, s1 = RATER.score(images_0, captions), RATER.score(images_1, captions)
    label_0, _ = label_pairs(s0, s1, torch.Generator().manual_seed(seed))
    return PreferencePairs(images_0, images_1, captions, label_0)


def hand_set(model: MiniPickScore, image_dir: list[float], text_dir: list[float]) -> None:
    """Constant embeddings: zero the last layers' weights and put the directions in the biases."""
    with torch.no_grad():
        model.image_proj.weight.zero_()
        model.text_mlp[-1].weight.zero_()
        model.image_proj.bias.zero_()[: len(image_dir)] = torch.tensor(image_dir)
        model.text_mlp[-1].bias.zero_()[: len(text_dir)] = torch.tensor(text_dir)


def test_score_is_scaled_cosine_of_the_embeddings():
    """score = exp(logit_scale) * cos(img, txt), with logit_scale clamped at log 100.

    Image embedding (3, 0), text embedding (2, 2 sqrt 3): cos = 6 / (3 * 4) = 0.5.
    logit_scale = log 10 -> 10 * 0.5 = 5; identical directions -> exp(logit_scale) = 10;
    logit_scale = log 1000 is clamped -> 100 * 0.5 = 50. Timesteps are ignored.
    """
    model = MiniPickScore()
    assert isinstance(model, Scorer)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    hand_set(model, [3.0, 0.0], [2.0, 2.0 * math.sqrt(3.0)])
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        assert_close(model(images, CAPTIONS), torch.tensor([5.0, 5.0]), rtol=1e-5, atol=1e-5)
        t = torch.tensor([10, 900])
        assert_close(model(images, CAPTIONS, t), model(images, CAPTIONS), rtol=0, atol=0)
        hand_set(model, [0.0, 7.0], [0.0, 0.5])
        assert_close(model(images, CAPTIONS), torch.tensor([10.0, 10.0]), rtol=1e-5, atol=1e-5)
        hand_set(model, [3.0, 0.0], [2.0, 2.0 * math.sqrt(3.0)])
        model.logit_scale.fill_(math.log(1000.0))
        assert_close(model(images, CAPTIONS), torch.tensor([50.0, 50.0]), rtol=1e-5, atol=1e-4)


def test_a_fresh_model_scores_captions_and_images_differently():
    model = MiniPickScore().eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        own = model(images, CAPTIONS)  # [2]
        swapped = model(images, CAPTIONS[::-1])
        assert own.shape == (2,) and not torch.allclose(own, swapped)
        assert not torch.allclose(own, model(images.flip(0), CAPTIONS))
        assert model(images.repeat(1, 1, 2, 2), CAPTIONS).shape == (2,)  # 32 px is resized
    with pytest.raises(ValueError, match="captions"):
        model(images, CAPTIONS[:1])


def test_pickscore_loss_exact_values():
    """CE against [label_0, 1 - label_0] over the logits [s0, s1], +log 0.5 for a tie.

    (s0, s1) = (2, 0), label 1:   -log sigmoid(2)  = log(1 + e^-2) = 0.126928
    (s0, s1) = (2, 0), label 0:   -log sigmoid(-2) = log(1 + e^2)  = 2.126928
    (s0, s1) = (1, -1), tie:      -(0.5 log sigmoid(2) + 0.5 log sigmoid(-2)) + log 0.5
                                  = 0.5 (0.126928 + 2.126928) - 0.693147 = 0.433781
    mean = (0.126928 + 2.126928 + 0.433781) / 3 = 0.895879
    weights (1, 0, 3): (0.126928 + 3 * 0.433781) / 4 = 0.357068
    an equal-score tie: -log 0.5 + log 0.5 = 0
    """
    s0, s1 = torch.tensor([2.0, 2.0, 1.0]), torch.tensor([0.0, 0.0, -1.0])
    label_0 = torch.tensor([1.0, 0.0, 0.5])
    tol = {"rtol": 0.0, "atol": 1e-6}
    assert_close(pickscore_loss(s0, s1, label_0), torch.tensor(0.895879), **tol)
    weights = torch.tensor([1.0, 0.0, 3.0])
    assert_close(pickscore_loss(s0, s1, label_0, weights), torch.tensor(0.357068), **tol)
    tie = pickscore_loss(torch.tensor([4.0]), torch.tensor([4.0]), torch.tensor([0.5]))
    assert_close(tie, torch.tensor(0.0), **tol)
    one_tie = pickscore_loss(s0[2:], s1[2:], label_0[2:])
    assert_close(one_tie, torch.tensor(0.433781), **tol)


def test_caption_contrastive_loss_masks_repeated_captions():
    """Each image picks its caption among the batch's captions; repeats are not negatives.

    logits (captions x [image_0s; image_1s]) = [[2, 0, 2, 0], [0, 1, 0, 1]]:
    image 0 of pair 0 sees [2, 0], target 0: log(1 + e^-2) = 0.126928;
    image 0 of pair 1 sees [0, 1], target 1: log(1 + e^-1) = 0.313262; same for the image_1s:
    mean = 0.220095. With one caption repeated, each image has no negative: loss 0.
    """
    logits = torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    ids = torch.tensor([[2, 5, 3], [2, 6, 3]])
    tol = {"rtol": 0.0, "atol": 1e-6}
    assert_close(caption_contrastive_loss(logits, ids), torch.tensor(0.220095), **tol)
    same = torch.tensor([[2, 5, 3], [2, 5, 3]])
    assert_close(caption_contrastive_loss(logits, same), torch.tensor(0.0), **tol)


def test_save_load_round_trip_and_seeded_init(tmp_path):
    state = torch.random.get_rng_state()
    model = MiniPickScore(ProxyConfig(seed=3, channels=(8, 16), embed_dim=32))
    assert torch.equal(torch.random.get_rng_state(), state)  # init does not draw from global RNG
    twin = MiniPickScore(ProxyConfig(seed=3, channels=(8, 16), embed_dim=32))
    other = MiniPickScore(ProxyConfig(seed=4, channels=(8, 16), embed_dim=32))
    assert torch.equal(model.image_proj.weight, twin.image_proj.weight)
    assert not torch.equal(model.image_proj.weight, other.image_proj.weight)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MiniPickScore.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert_close(loaded(images, CAPTIONS * 2), model(images, CAPTIONS * 2), rtol=0, atol=0)


def test_training_beats_chance_on_held_out_prompts():
    """768 train-prompt pairs, 10 epochs; validation prompts never occur in training.

    The labels are noisy (Bradley-Terry at the rater's temperature): even the gold rater's own
    order agrees with only about 82 % of the non-tie labels, so 0.6 is well above chance.
    """
    train = make_pairs(768, "train", seed=11)
    val = make_pairs(256, "validation", seed=12)
    model = MiniPickScore()
    before = evaluate_pairs(model, val)
    history = fit_proxy(model, train)
    after = evaluate_pairs(model, val)
    assert history[-1] < history[0]
    assert after["non_tie"] >= 200
    assert after["accuracy"] > 0.6, (before, after)
    assert after["loss"] < before["loss"]


def _png(image: torch.Tensor) -> bytes:
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pairs(folder, splits: dict[str, PreferencePairs]) -> dict:
    """Pick-a-Pic-style shards with the columns the proxy reads."""
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


def test_load_pairs_decodes_the_shards(tmp_path):
    pairs = make_pairs(6, "train", seed=3)
    write_pairs(tmp_path, {"train": pairs})
    loaded = load_pairs(tmp_path, "train", image_size=16)
    assert loaded.captions == pairs.captions
    assert torch.equal(loaded.label_0, pairs.label_0)
    assert_close(loaded.images_0, pairs.images_0, rtol=0, atol=0.5 / 127.5 + 1e-6)
    assert_close(loaded.weights, torch.ones(6), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path, "validation", image_size=16)


def test_proxy_dir_builds_once_and_reuses(tmp_path, monkeypatch):
    assets = MiniPickAssets(tmp_path, AssetSettings(num_train_pairs=96, num_val_pairs=48))
    # Stand-in base and pairs assets: complete, so pairs_dir() neither pretrains nor samples.
    ensure_asset(assets.base_dir(build=False), lambda tmp: {}, "base model")
    splits = {"train": make_pairs(96, "train", 5), "validation": make_pairs(48, "validation", 6)}
    ensure_asset(assets.pairs_dir(build=False), lambda tmp: write_pairs(tmp, splits), "pairs")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        folder = assets.proxy_dir()
        assert torch.get_num_threads() == 2  # training runs on one thread, then restores it
    finally:
        torch.set_num_threads(threads)
    assert folder == assets.proxy_dir(build=False) and is_complete(folder)
    info = json.loads((folder / MANIFEST).read_text())["info"]
    assert info["train_pairs"] == 96 and info["val_pairs"] == 48
    assert info["val_non_tie"] == int((splits["validation"].label_0 != 0.5).sum())
    assert 0.0 <= info["val_accuracy"] <= 1.0 and 0.0 <= info["train_accuracy"] <= 1.0
    assert info["train_seconds"] >= 0.0

    def no_rebuild(*args):
        raise AssertionError("a complete proxy must be reused")

    monkeypatch.setattr(assets_module, "train_proxy", no_rebuild)
    assert assets.proxy_dir() == folder
    model = MiniPickScore.from_pretrained(folder)
    val = splits["validation"]
    with torch.no_grad():
        assert model(val.images_0[:4], val.captions[:4]).shape == (4,)
