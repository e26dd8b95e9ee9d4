import io
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from torch.testing import assert_close

from lightning_pref.__main__ import main
from lightning_pref.data import (
    SMPO_SCORE_MAX,
    SMPO_SCORE_MIN,
    ImageTransform,
    PairBuilder,
    PickAPicDataModule,
    ScoreLabels,
    decode_image,
    score_pairs,
)
from lightning_pref.data.transforms import to_tensor
from lightning_pref.errors import ConfigError, DataError
from lightning_pref.scoring import Scorer

RES = 16
TINY = Path(__file__).resolve().parents[1] / "assets" / "pickapic_tiny"
SIGMOID_1 = 0.7310585786300049  # 1 / (1 + e^-1)


class Brightness(Scorer):
    """Mean pixel value in [-1, 1] plus ``offset``: a tiny deterministic scorer."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, images, captions, timesteps=None):
        assert len(captions) == images.shape[0]
        self.shapes.append(tuple(images.shape))
        return images.float().mean(dim=(1, 2, 3)) + self.offset


def brightness(jpg: bytes) -> float:
    return float(to_tensor(decode_image(jpg)).mean())


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def plain(jpg: bytes) -> torch.Tensor:
    return ImageTransform(RES)(decode_image(jpg), np.random.default_rng(0))


def decodable(row: dict) -> bool:
    try:
        decode_image(row["jpg_0"]), decode_image(row["jpg_1"])
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(folder, info): the tiny shards scored by Brightness (64 train rows, 1 corrupt; 8 val)."""
    out = tmp_path_factory.mktemp("scored")
    return out, score_pairs(str(TINY), str(out), Brightness(), batch_size=5, device="cpu")


# ------------------------------------------------------------------ ScoreLabels arithmetic
def test_pref_prob_exact_values():
    """span = 1 - 0 = 1.

    (1.0, 0.0): n_w - n_l = 1 → p = sigmoid(1) = 0.7311, jpg_0 wins (no swap).
    (0.2, 0.7): n_w - n_l = 0.5 → p = sigmoid(0.5) = 0.6225, jpg_1 wins (swap).
    (0.4, 0.4): equal scores → p = 0.5; SmPO's ps_label_0 = s0 > s1 is False → swap.
    """
    labels = ScoreLabels(0.0, 1.0)
    swap, p = labels.label(1.0, 0.0)
    assert swap is False and p == pytest.approx(SIGMOID_1, abs=1e-12)
    swap, p = labels.label(0.2, 0.7)
    assert swap is True and p == pytest.approx(0.6224593312018546, abs=1e-12)
    assert labels.label(0.4, 0.4) == (True, 0.5)


def test_smpo_constants_give_the_documented_range():
    """SmPO: n = (s - 0.11544) / (0.28202 - 0.11544); s_w = max, s_l = min → n_w - n_l = 1,
    p = sigmoid(1) = 0.7311 (the top of [0.5, 0.731]). A gap of a quarter of the span gives
    sigmoid(0.25) = 0.5622.
    """
    labels = ScoreLabels()
    assert (labels.score_min, labels.score_max) == (SMPO_SCORE_MIN, SMPO_SCORE_MAX)
    assert labels.label(SMPO_SCORE_MAX, SMPO_SCORE_MIN) == (False, pytest.approx(SIGMOID_1))
    quarter = 0.25 * (SMPO_SCORE_MAX - SMPO_SCORE_MIN)
    swap, p = labels.label(0.2, 0.2 + quarter)
    assert swap and p == pytest.approx(0.5621765008857981, abs=1e-9)


def test_vectorised_labels_match_scalar():
    labels = ScoreLabels(0.1, 0.3)
    s0 = torch.tensor([0.3, 0.12, 0.2, 0.25], dtype=torch.float64)
    s1 = torch.tensor([0.1, 0.22, 0.2, float("nan")], dtype=torch.float64)
    swap, p = labels.labels(s0, s1)
    for i in range(3):
        assert (bool(swap[i]), float(p[i])) == pytest.approx(labels.label(s0[i], s1[i]))
    assert_close(p[:3], torch.tensor([SIGMOID_1, sigmoid(0.5), 0.5], dtype=torch.float64))
    assert swap.tolist()[:3] == [False, True, True] and math.isnan(p[3])


@pytest.mark.parametrize("scores", [(float("nan"), 0.2), (0.2, None), (0.1, "x"), (math.inf, 0)])
def test_unusable_scores_raise_value_error(scores):
    with pytest.raises(ValueError, match="scores"):
        ScoreLabels(0.0, 1.0).label(*scores)


def test_bad_or_unresolved_constants():
    with pytest.raises(ConfigError, match="must exceed"):
        ScoreLabels(0.3, 0.1)
    with pytest.raises(ConfigError, match="resolve"):
        ScoreLabels(None, None).label(0.1, 0.2)


def test_pair_builder_orders_by_score_and_refuses_ties(train_rows):
    row = next(r for r in train_rows if r["label_0"] == 1.0 and decodable(r))
    build = PairBuilder(ImageTransform(RES), score_labels=ScoreLabels(0.0, 1.0))
    rng = np.random.default_rng(0)
    # the human prefers jpg_0, the scores prefer jpg_1 by 0.5 → swap, p = sigmoid(0.5)
    sample = build({**row, "score_0": 0.2, "score_1": 0.7}, rng)
    assert torch.equal(sample.pixels_w, plain(row["jpg_1"]))
    assert torch.equal(sample.pixels_l, plain(row["jpg_0"]))
    assert sample.pref_prob == pytest.approx(sigmoid(0.5), abs=1e-12)
    assert PairBuilder(ImageTransform(RES)).order(row) == (False, 1.0)  # human label alone
    with pytest.raises(ValueError, match="tie"):
        build.order({**row, "label_0": 0.5, "score_0": 0.2, "score_1": 0.7})
    with pytest.raises(ValueError, match="not finite"):
        build.order({**row, "score_0": float("nan"), "score_1": 0.7})


# ------------------------------------------------------------------ score_pairs
def test_score_pairs_round_trip(scored, tiny_dir, read_rows, caplog):
    out, info = scored
    names = sorted(str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*.parquet"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == names
    assert sorted(info["files"]) == names
    expected_scores = []
    for split in ("train", "validation_unique"):
        before, after = read_rows(tiny_dir / split), read_rows(out / split)
        assert len(after) == len(before)
        for old, new in zip(before, after, strict=True):
            assert {k: v for k, v in new.items() if not k.startswith("score_")} == old
            if not decodable(old):
                assert math.isnan(new["score_0"]) and math.isnan(new["score_1"])
                continue
            want = (brightness(old["jpg_0"]), brightness(old["jpg_1"]))
            assert (new["score_0"], new["score_1"]) == pytest.approx(want, abs=1e-6)
            expected_scores += want
    schema = pq.read_schema(out / names[0])
    assert schema.field("score_0").type == pa.float64() and schema.names[-2:] == [
        "score_0",
        "score_1",
    ]
    stats = json.loads((out / "scores.json").read_text())
    assert stats == info
    assert stats["count"] == 72 and stats["rows_skipped"] == 1 and stats["scorer"] == "Brightness"
    assert stats["score_min"] == pytest.approx(min(expected_scores), abs=1e-6)
    assert stats["score_max"] == pytest.approx(max(expected_scores), abs=1e-6)


def test_corrupt_row_is_warned_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_pref.data"):
        info = score_pairs(str(TINY / "train"), str(tmp_path), Brightness(), 64, "cpu")
    assert info["rows_skipped"] == 1 and info["count"] == 64
    assert any("cannot score row" in r.getMessage() for r in caplog.records)


def png(size: tuple[int, int], value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_sizes_are_scored_at_their_stored_size(tmp_path):
    """Grey levels v give brightness v / 127.5 - 1 exactly (PNG is lossless): 51 → -0.6."""
    sizes = [((16, 16), (8, 12)), ((8, 12), (16, 16)), ((16, 16), (16, 16))]
    values = [(51, 204), (102, 0), (255, 153)]
    table = pa.table(
        {
            "caption": ["a", None, "c"],
            "jpg_0": [png(s[0], v[0]) for s, v in zip(sizes, values, strict=True)],
            "jpg_1": [png(s[1], v[1]) for s, v in zip(sizes, values, strict=True)],
            "label_0": [1.0, 0.0, 0.5],
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "x.parquet")
    scorer = Brightness()
    score_pairs(str(tmp_path / "in"), str(tmp_path / "out"), scorer, batch_size=3, device="cpu")
    out = pq.read_table(tmp_path / "out" / "x.parquet").to_pydict()
    want = [[v / 127.5 - 1 for v in pair] for pair in values]
    got = torch.tensor([out["score_0"], out["score_1"]], dtype=torch.float64).T  # [3, 2]
    assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)
    assert sorted(scorer.shapes) == [(2, 3, 12, 8), (4, 3, 16, 16)]  # one call per size
    with pytest.raises(ConfigError, match="overwrite"):
        score_pairs(str(tmp_path / "out"), str(tmp_path / "out"), scorer, device="cpu")


# ------------------------------------------------------------------ the data module
def make_dm(train, val, **kwargs) -> PickAPicDataModule:
    args = {
        "train_files": str(train),
        "val_files": str(val),
        "resolution": RES,
        "hflip": False,
        "proportion_empty_prompts": 0.0,
    }
    dm = PickAPicDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def expected_order(row: dict, span: float) -> tuple[str, str, float]:
    """Winner column, loser column and pref_prob from the stored scores."""
    s0, s1 = row["score_0"], row["score_1"]
    cols = ("jpg_0", "jpg_1") if s0 > s1 else ("jpg_1", "jpg_0")
    return (*cols, sigmoid(abs(s0 - s1) / span))


@pytest.mark.parametrize("constants", ["scores_json", "explicit"])
def test_data_module_yields_score_ordered_smoothed_pairs(scored, read_rows, constants):
    out, info = scored
    labels = ScoreLabels(None, None) if constants == "scores_json" else ScoreLabels(-1.0, 1.0)
    span = info["score_max"] - info["score_min"] if constants == "scores_json" else 2.0
    dm = make_dm(out / "train", out / "validation_unique", score_labels=labels, drop_ties=False)
    rows = read_rows(out / "train")
    assert dm.train_set.rows == [i for i, r in enumerate(rows) if r["label_0"] in (0.0, 1.0)]
    by_caption = {r["caption"]: r for r in rows}
    seen, disagree, skipped = 0, 0, 0
    for batch in dm.train_dataloader():
        skipped += batch.num_skipped
        for i, caption in enumerate(batch.captions):
            row = by_caption[caption]
            col_w, col_l, p = expected_order(row, span)
            assert torch.equal(batch.pixels_w[i], plain(row[col_w]))
            assert torch.equal(batch.pixels_l[i], plain(row[col_l]))
            assert float(batch.pref_prob[i]) == pytest.approx(p, abs=1e-6)
            assert 0.5 <= p <= SIGMOID_1 + 1e-9
            disagree += (col_w == "jpg_0") != (row["label_0"] == 1.0)
            seen += 1
    assert seen + skipped == 56 and skipped == 1  # 64 rows - 8 human ties; 1 corrupt row
    assert 0 < disagree < seen  # the scores overrule the human label on some pairs
    val_rows = [r for r in read_rows(out / "validation_unique") if r["label_0"] in (0.0, 1.0)]
    val = [b for b in dm.val_dataloader()]
    got = torch.cat([b.pref_prob for b in val])
    assert_close(got, torch.tensor([expected_order(r, span)[2] for r in val_rows]).float())
    assert dm.hparams["score_labels"] == {
        "score_min": labels.score_min,
        "score_max": labels.score_max,
    }


def test_nan_scored_row_is_skipped_and_counted(scored, tmp_path, caplog):
    out, _ = scored
    shutil.copytree(out, tmp_path / "data")
    shard = sorted((tmp_path / "data" / "train").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    labels = table.column("label_0").to_pylist()
    target = next(i for i, v in enumerate(labels) if v in (0.0, 1.0))
    score_0 = table.column("score_0").to_pylist()
    score_0[target] = float("nan")
    index = table.schema.get_field_index("score_0")
    pq.write_table(table.set_column(index, "score_0", pa.array(score_0, pa.float64())), shard)
    dm = make_dm(tmp_path / "data" / "train", out / "validation_unique", score_labels=ScoreLabels())
    with caplog.at_level(logging.WARNING, logger="lightning_pref.data"):
        skipped = sum(b.num_skipped for b in dm.train_dataloader())
    assert skipped == 2  # the corrupt image row and the NaN-scored row
    assert any("not finite" in r.getMessage() for r in caplog.records)


def test_missing_score_columns_is_a_one_line_error(tiny_dir):
    with pytest.raises(DataError, match="score-pairs") as err:
        make_dm(tiny_dir / "train", tiny_dir / "validation_unique", score_labels=ScoreLabels())
    assert "score_0, score_1" in str(err.value) and "\n" not in str(err.value)


def test_none_constants_without_scores_json_raise(scored, tmp_path):
    out, _ = scored
    shutil.copytree(out / "train", tmp_path / "train")
    with pytest.raises(ConfigError, match="score_labels.score_min is None"):
        make_dm(tmp_path / "train", out / "validation_unique", score_labels=ScoreLabels(None, None))


def test_off_scale_constants_warn(scored, caplog):
    """Brightness lies in [-1, 1], far outside SmPO's [0.115, 0.282]: a logit-scale mix-up."""
    out, _ = scored
    with caplog.at_level(logging.WARNING, logger="lightning_pref.data"):
        make_dm(out / "train", out / "validation_unique", score_labels=ScoreLabels())
    assert any("logit_scale: false" in r.getMessage() for r in caplog.records)


def test_score_labels_parse_from_config_and_survive_weights_only(tmp_path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PickAPicDataModule, "data")
    cfg = parser.parse_args(["--data.score_labels", '{"score_min": null, "score_max": 0.5}'])
    dm = parser.instantiate_classes(cfg).data
    assert dm.score_labels == ScoreLabels(None, 0.5)
    torch.save(dict(dm.hparams), tmp_path / "hp.pt")
    loaded = torch.load(tmp_path / "hp.pt", weights_only=True)
    assert loaded["score_labels"] == {"score_min": None, "score_max": 0.5}
    assert PickAPicDataModule(**loaded).score_labels == ScoreLabels(None, 0.5)


# ------------------------------------------------------------------ the CLI
def test_score_pairs_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--input", str(TINY / "validation_unique"), "--output", str(out)]
    main(["score-pairs", *args, "--scorer", "test_scored.Brightness", "--scorer.offset", "1.0"])
    rows = pq.read_table(out / "validation_unique-00000-of-00001.parquet").to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert row["score_0"] == pytest.approx(brightness(row["jpg_0"]) + 1.0, abs=1e-6)
    stats = json.loads((out / "scores.json").read_text())
    assert stats["count"] == 8 and stats["scorer"] == "Brightness" and stats["rows_skipped"] == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["score-pairs", *args, "--scorer", "lightning_pref.data.PickAPicDataModule"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["score-pairs", "--help"])
    assert "logit_scale false" in " ".join(capsys.readouterr().out.split())


def test_streaming_data_module_applies_score_labels_too(scored, read_rows):
    out, info = scored
    span = info["score_max"] - info["score_min"]
    labels = ScoreLabels(None, None)
    dm = make_dm(out / "train", out / "validation_unique", score_labels=labels, streaming=True)
    by_caption = {r["caption"]: r for r in read_rows(out / "train")}
    captions, probs = [], []
    for batch in dm.train_dataloader():
        captions += batch.captions
        probs += batch.pref_prob.tolist()
    assert len(captions) == 55 and all(by_caption[c]["label_0"] != 0.5 for c in captions)
    want = [expected_order(by_caption[c], span)[2] for c in captions]
    assert probs == pytest.approx(want, abs=1e-6)
    val = torch.cat([b.pref_prob for b in dm.val_dataloader()])
    assert len(val) == 7 and bool((val < 1.0).all())  # 8 validation rows, 1 human tie


def test_missing_columns_reported_before_missing_constants(tiny_dir):
    with pytest.raises(DataError, match="score-pairs"):
        make_dm(tiny_dir / "train", None, score_labels=ScoreLabels(None, None))
