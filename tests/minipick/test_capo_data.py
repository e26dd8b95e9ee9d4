"""CaPO's MiniPick data: the aesthetic scorer's arithmetic and the pair-folder builder.

The builder runs on stand-in assets: a tiny scratch MiniPick model (channels 16/16, untrained)
saved as the base model and an untrained tiny proxy, so nothing is pretrained.
"""

import csv
import json
import math
import re

import pytest
import torch

import lightning_pref.minipick.assets as assets_module
import lightning_pref.minipick.capo_data as capo_data
from lightning_pref.data import PairFolderDataModule
from lightning_pref.data.calibrated import CalibratedPair, calibrated_rewards, pareto_front
from lightning_pref.minipick.aesthetic import (
    MiniPickAesthetic,
    centredness,
    colourfulness,
    rms_contrast,
)
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.build import ScratchMiniPickPolicy
from lightning_pref.minipick.capo_data import MiniPickCaPODataModule
from lightning_pref.minipick.capo_pairs import (
    CaPOSettings,
    build_capo_folder,
    order_disagreement,
    pair_conflicts,
    sample_candidates,
)
from lightning_pref.minipick.proxy import MiniPickScore, ProxyConfig
from lightning_pref.minipick.store import default_data_dir, ensure_asset, is_complete
from lightning_pref.minipick.world import prompts


def _red_blue() -> torch.Tensor:
    """``[1, 3, 1, 2]`` in [0, 1]: a red pixel, then a blue one."""
    return torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]]])


def _corner_dot() -> torch.Tensor:
    """``[1, 3, 4, 4]`` in [0, 1]: black, one white pixel at row 0, column 3 (top right)."""
    image = torch.zeros(1, 3, 4, 4)
    image[0, :, 0, 3] = 1.0
    return image


def test_colourfulness_exact():
    """Red (1,0,0) and blue (0,0,1): rg = [1, 0] (mean 0.5, var 0.25); yb = (R+G)/2 - B =
    [0.5, -1] (mean -0.25, var 0.5625). sqrt(0.8125) + 0.3·sqrt(0.25 + 0.0625)
    = 0.9013878 + 0.3·0.5590170 = 1.0690929. A grey image has none."""
    torch.testing.assert_close(colourfulness(_red_blue()), torch.tensor([1.0690929]))
    torch.testing.assert_close(colourfulness(_corner_dot()), torch.tensor([0.0]))


def test_rms_contrast_exact():
    """Luma of red 0.299, of blue 0.114: std of two values = |0.299 - 0.114| / 2 = 0.0925.
    One white pixel in 16: mean 1/16, var 1/16 - 1/256 = 15/256, std sqrt(15)/16 = 0.2420615."""
    torch.testing.assert_close(rms_contrast(_red_blue()), torch.tensor([0.0925]))
    torch.testing.assert_close(rms_contrast(_corner_dot()), torch.tensor([math.sqrt(15) / 16]))


def test_centredness_exact_and_direction():
    """Corner dot: the median colour is black, so only the dot is salient; its pixel centre is
    x = (2·3+1)/4 - 1 = 0.75, y = (2·0+1)/4 - 1 = -0.75, |c| = 0.75·√2, score 1 - 0.75 = 0.25.
    The same dot at row 1, column 2 (centre (0.25, -0.25)) scores 1 - 0.25 = 0.75; a flat
    image has no salience and scores 1."""
    torch.testing.assert_close(centredness(_corner_dot()), torch.tensor([0.25]))
    nearer = torch.zeros(1, 3, 4, 4)
    nearer[0, :, 1, 2] = 1.0
    torch.testing.assert_close(centredness(nearer), torch.tensor([0.75]))
    torch.testing.assert_close(centredness(torch.full((1, 3, 4, 4), 0.3)), torch.tensor([1.0]))


def test_aesthetic_scorer_sums_weighted_features_in_minus_one_to_one():
    """Corner dot: 10·(1·0 + 1·0.2420615 + 1·0.25) = 4.920615; weights (2, 0, 1), scale 1 on
    red/blue: 2·1.0690929 + 0 + 1·1 (a two-pixel row is centred: cx = (-0.5 + 0.5)/2 = 0)
    = 3.1381858. Captions are not read, but their count must match."""
    scorer = MiniPickAesthetic()
    got = scorer(_corner_dot() * 2 - 1, ["a small red circle on the left"])
    torch.testing.assert_close(got, torch.tensor([4.920615]))
    weighted = MiniPickAesthetic(colour_weight=2.0, contrast_weight=0.0, scale=1.0)
    torch.testing.assert_close(weighted(_red_blue() * 2 - 1, [""]), torch.tensor([3.1381858]))
    with pytest.raises(ValueError, match="1 images but 2 captions"):
        scorer(_corner_dot(), ["", ""])


def test_order_disagreement_and_pair_conflicts_exact():
    """Rewards a = [0, 1, 2], b = [0, 2, 1] on one prompt: of the pairs (0,1), (0,2), (1,2) only
    (1,2) is ordered oppositely (a: 1 < 2, b: 2 > 1): 1/3. Pairs (w=2, l=0) and (w=2, l=1): the
    second's loser beats its winner on b (2 > 1), so 1 of 2 conflict."""
    scores = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]]])  # [1, 3, 2]
    assert order_disagreement(scores) == pytest.approx(1 / 3)
    pairs = [CalibratedPair(0, 2, 0, 0.5), CalibratedPair(0, 2, 1, 0.1)]
    assert pair_conflicts(scores, pairs) == pytest.approx(0.5)
    assert pair_conflicts(scores, []) == 0.0


def _tiny_policy(folder=None):
    """An untrained 16 px MiniPick model (channels 16/16), built; saved to ``folder`` if given."""
    policy = ScratchMiniPickPolicy(image_size=16, seed=0, unet_channels=(16, 16))
    policy.build()
    policy.eval()
    if folder is not None:
        policy.unet.save_pretrained(folder / "unet")
        policy.noise_scheduler.save_pretrained(folder / "scheduler")
        policy.text_encoder.save_pretrained(folder / "text_encoder")
        policy.tokenizer.save_pretrained(folder / "tokenizer")
    return policy


def test_sample_candidates_shape_and_seed():
    policy = _tiny_policy()
    captions = prompts("train")[:3]
    a = sample_candidates(policy, captions, 2, seed=5, num_steps=2)
    b = sample_candidates(policy, captions, 2, seed=5, num_steps=2)
    assert a.shape == (3, 2, 3, 16, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0, 0], a[0, 1])  # two samples of one prompt differ


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """A MiniPick cache whose base model and proxy are tiny and untrained."""
    assets = MiniPickAssets(tmp_path_factory.mktemp("minipick"))
    ensure_asset(assets.base_dir(build=False), lambda tmp: _tiny_policy(tmp) and {}, "base")
    proxy = MiniPickScore(ProxyConfig(channels=(4, 8), text_width=8, embed_dim=8, seed=1))
    ensure_asset(assets.proxy_dir(build=False), proxy.save_pretrained, "proxy reward")
    return assets


def _indices(path, split):
    """``images/<split>/pPPP_sNN.png`` -> (prompt, sample)."""
    match = re.fullmatch(rf"images/{split}/p(\d{{3}})_s(\d{{2}})\.png", path)
    assert match, path
    return int(match[1]), int(match[2])


def _rows(folder):
    with (folder / "pairs.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_datamodule_builds_pareto_pairs_once_and_loads_them(tiny_assets, monkeypatch):
    """Every row pairs an upper-front sample with a lower-front one of the recorded scores,
    labelled (1 + Δ)/2 with Δ the gap of the mean calibrated rewards (float32 in the builder:
    1e-6); the folder is sealed, reused, and read back by PairFolderDataModule, winners first."""
    dm = MiniPickCaPODataModule(
        data_dir=str(tiny_assets.root), samples_per_prompt=4, pairs_per_prompt=None,
        max_prompts=3, batch_size=2,
    )  # fmt: skip
    dm.prepare_data()
    folder = dm.csv_path.parent
    assert folder.name.startswith("capo-") and is_complete(folder)
    info = json.loads((folder / "capo.json").read_text())
    rows = _rows(folder)
    for split in ("train", "validation"):
        saved = json.loads((folder / f"scores_{split}.json").read_text())
        scores = torch.tensor(saved["scores"])  # [3, 4, 2]
        assert scores.shape == (3, 4, 2) and saved["captions"] == prompts(split)[:3]
        calibrated = calibrated_rewards(scores.double())  # [3, 4, 2]
        split_rows = [r for r in rows if r["split"] == split]
        assert len(split_rows) == info[split]["pairs"] > 0
        assert 0.0 <= info[split]["order_disagreement"] <= 1.0
        for row in split_rows:
            (p, w), (p_l, lo) = _indices(row["image_w"], split), _indices(row["image_l"], split)
            assert p_l == p and row["caption"] == saved["captions"][p]
            assert w in pareto_front(calibrated[p], upper=True)
            assert lo in pareto_front(calibrated[p], upper=False)
            gap = float(calibrated[p, w].mean() - calibrated[p, lo].mean())
            assert gap > 0 and float(row["label"]) == pytest.approx((1 + gap) / 2, abs=1e-6)
    assert folder == tiny_assets.capo_dir(dm.capo_settings, build=False)
    monkeypatch.setattr(assets_module, "build_capo_pairs", lambda *a, **k: pytest.fail("rebuilt"))
    dm.prepare_data()  # complete: reused

    data = PairFolderDataModule(str(folder), resolution=16, hflip=False, batch_size=2)
    data.setup("fit")
    assert len(data.train_set) == info["train"]["pairs"]
    assert len(data.val_set) == info["validation"]["pairs"]
    batch = next(iter(data.val_dataloader()))
    labels = torch.tensor([float(r["label"]) for r in rows if r["split"] == "validation"][:2])
    torch.testing.assert_close(batch.pref_prob, labels.to(batch.pref_prob.dtype))
    assert batch.pixels_w.shape == (2, 3, 16, 16)


def test_single_reward_pairs_max_with_min(tmp_path):
    """One reward: the upper front is the argmax, the lower front the argmin: one pair a prompt."""
    policy = _tiny_policy()
    splits = {"train": prompts("train")[:2]}
    settings = CaPOSettings(samples_per_prompt=3, pairs_per_prompt=None, sample_steps=2)
    info = build_capo_folder(tmp_path, policy, [MiniPickAesthetic()], splits, settings)
    scores = torch.tensor(json.loads((tmp_path / "scores_train.json").read_text())["scores"])
    rows = _rows(tmp_path)
    assert info["train"]["pairs"] == len(rows) == 2 and "order_disagreement" not in info["train"]
    for p, row in enumerate(rows):
        assert row["image_w"] == f"images/train/p{p:03d}_s{int(scores[p, :, 0].argmax()):02d}.png"
        assert row["image_l"] == f"images/train/p{p:03d}_s{int(scores[p, :, 0].argmin()):02d}.png"
    assert info["train"]["pair_conflicts"] == 0.0


def test_command_line_passes_settings(monkeypatch, tmp_path):
    """``--pairs_per_prompt 0``: every front pair; ``--single_reward``: no aesthetic reward."""
    seen = {}

    def fake_write(assets, folder, settings):
        seen.update(folder=folder, root=assets.root, settings=settings)
        return {"settings": {}, "train": {"pairs": 0}}

    monkeypatch.setattr(MiniPickAssets, "write_capo", fake_write)
    argv = ["--out", str(tmp_path), "--samples_per_prompt", "6", "--pairs_per_prompt", "0"]
    capo_data.main([*argv, "--single_reward", "--seed", "3"])
    assert seen["folder"] == tmp_path and seen["root"] == default_data_dir()
    assert seen["settings"] == CaPOSettings(6, None, 3, multi_reward=False)
