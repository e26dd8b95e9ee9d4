"""MiniPick's proxy-scored pairs, on stand-in assets (no base model pretraining, no proxy fit)."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

import lightning_pref.minipick.assets as assets_module
from lightning_pref.data import ScoreLabels, decode_image, write_fake_pickapic
from lightning_pref.data.transforms import to_tensor
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.data import MiniPickDataModule
from lightning_pref.minipick.proxy import MiniPickScore, ProxyConfig
from lightning_pref.minipick.store import ensure_asset, is_complete


@pytest.fixture
def fake_assets(tmp_path):
    """Complete stand-ins for the base, pairs and proxy assets under the default settings."""
    assets = MiniPickAssets(tmp_path)
    ensure_asset(assets.base_dir(build=False), lambda tmp: {}, "base model")

    def pairs(tmp):
        write_fake_pickapic(tmp, {"train": 24, "validation": 8}, seed=3, num_corrupt=1)
        return {}

    ensure_asset(assets.pairs_dir(build=False), pairs, "pairs")
    tiny = MiniPickScore(ProxyConfig(channels=(4, 8), text_width=8, embed_dim=8, seed=1))
    ensure_asset(assets.proxy_dir(build=False), tiny.save_pretrained, "proxy reward")
    return assets


def test_scored_pairs_dir_scores_with_the_proxy_once(fake_assets, monkeypatch):
    folder = fake_assets.scored_pairs_dir()
    assert folder.name.endswith(fake_assets.pairs_dir(build=False).name.split("-", 1)[1])
    assert is_complete(folder) and folder == fake_assets.scored_pairs_dir(build=False)
    stats = json.loads((folder / "scores.json").read_text())
    assert (
        stats["count"] == 32 and stats["rows_skipped"] == 1 and stats["scorer"] == "MiniPickScore"
    )
    proxy = MiniPickScore.from_pretrained(fake_assets.proxy_dir(build=False))
    rows = pq.read_table(folder / "validation" / "validation-00000-of-00001.parquet").to_pylist()
    images = torch.stack([to_tensor(decode_image(r["jpg_1"])) for r in rows])  # [8, 3, 16, 16]
    with torch.no_grad():
        want = proxy(images, [r["caption"] for r in rows]).double()
    got = torch.tensor([r["score_1"] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    def no_rescore(*args, **kwargs):
        raise AssertionError("complete scored pairs must be reused")

    monkeypatch.setattr(assets_module, "score_pairs", no_rescore)
    assert fake_assets.scored_pairs_dir() == folder


def test_minipick_datamodule_with_score_labels(fake_assets):
    """Constants from scores.json: pref_prob = sigmoid(|s0 - s1| / (max - min)) in [0.5, 0.7311]."""
    dm = MiniPickDataModule(
        str(fake_assets.root), batch_size=4, score_labels=ScoreLabels(None, None)
    )
    assert dm.pairs_path == fake_assets.scored_pairs_dir(build=False)
    dm.setup("fit")
    stats = json.loads((dm.pairs_path / "scores.json").read_text())
    span = stats["score_max"] - stats["score_min"]
    rows = {r["caption"]: r for r in pq.read_table(dm.pairs_path / "train").to_pylist()}
    batches = list(dm.train_dataloader())
    assert sum(len(b.captions) + b.num_skipped for b in batches) == 20  # 24 - 3 ties, floor(21/4)
    for batch in batches:
        for caption, p in zip(batch.captions, batch.pref_prob.tolist(), strict=True):
            gap = abs(rows[caption]["score_0"] - rows[caption]["score_1"])
            assert p == pytest.approx(1 / (1 + math.exp(-gap / span)), abs=1e-6)
            assert 0.5 <= p <= 0.7311
    assert MiniPickDataModule(str(fake_assets.root)).pairs_path == fake_assets.pairs_dir(False)
