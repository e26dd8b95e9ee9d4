import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_pref.data import PICKAPIC_SCHEMA, decode_image, write_fake_pickapic

EXPECTED_DTYPES = {
    "are_different": pa.bool_(),
    "best_image_uid": pa.string(),
    "caption": pa.string(),
    "created_at": pa.timestamp("ns"),
    "has_label": pa.bool_(),
    "image_0_uid": pa.string(),
    "image_0_url": pa.string(),
    "image_1_uid": pa.string(),
    "image_1_url": pa.string(),
    "jpg_0": pa.binary(),
    "jpg_1": pa.binary(),
    "label_0": pa.float64(),
    "label_1": pa.float64(),
    "model_0": pa.string(),
    "model_1": pa.string(),
    "ranking_id": pa.int64(),
    "user_id": pa.int64(),
    "num_example_per_prompt": pa.int64(),
    "__index_level_0__": pa.int64(),
}


def test_layout_schema_and_dtypes(tmp_path):
    files = write_fake_pickapic(tmp_path, {"train": 10, "validation_unique": 4}, image_size=12)
    assert [p.relative_to(tmp_path).as_posix() for p in files["train"]] == [
        "train/train-00000-of-00002.parquet",
        "train/train-00001-of-00002.parquet",
    ]
    assert [p.relative_to(tmp_path).as_posix() for p in files["validation_unique"]] == [
        "validation_unique/validation_unique-00000-of-00001.parquet"
    ]
    for paths in files.values():
        for path in paths:
            schema = pq.read_schema(path)
            assert dict(zip(schema.names, schema.types, strict=True)) == EXPECTED_DTYPES
    assert PICKAPIC_SCHEMA.names == list(EXPECTED_DTYPES)
    assert [pq.read_metadata(p).num_rows for p in files["train"]] == [5, 5]


def test_rows_are_consistent_and_decodable(tmp_path, read_rows):
    write_fake_pickapic(tmp_path, {"train": 16}, image_size=12, tie_fraction=0.25)
    rows = read_rows(tmp_path / "train")
    labels = [r["label_0"] for r in rows]
    assert labels.count(0.5) == 4
    assert labels.count(0.0) > 0 and labels.count(1.0) > 0
    assert labels.count(0.0) + labels.count(1.0) == 12
    for r in rows:
        assert r["label_0"] + r["label_1"] == 1.0
        expected_best = {1.0: r["image_0_uid"], 0.0: r["image_1_uid"], 0.5: ""}[r["label_0"]]
        assert r["best_image_uid"] == expected_best
        assert decode_image(r["jpg_0"]).size == (12, 12)
        assert decode_image(r["jpg_1"]).size == (12, 12)
    assert len({r["caption"] for r in rows}) == 16


def test_deterministic_bytes_for_a_seed(tmp_path):
    first = write_fake_pickapic(tmp_path / "a", seed=3, num_corrupt=2)
    second = write_fake_pickapic(tmp_path / "b", seed=3, num_corrupt=2)
    other = write_fake_pickapic(tmp_path / "c", seed=4, num_corrupt=2)
    for split in first:
        for p, q, r in zip(first[split], second[split], other[split], strict=True):
            assert p.read_bytes() == q.read_bytes()
            assert p.read_bytes() != r.read_bytes()


def test_corrupt_rows_are_truncated_non_tie_rows(tmp_path, read_rows):
    write_fake_pickapic(tmp_path, {"train": 24}, num_corrupt=3)
    bad = []
    for i, r in enumerate(read_rows(tmp_path / "train")):
        for column in ("jpg_0", "jpg_1"):
            try:
                decode_image(r[column])
            except ValueError:
                bad.append(i)
                assert r["label_0"] in (0.0, 1.0)
    assert len(bad) == 3


def test_committed_assets_match_the_generator(tmp_path, tiny_dir):
    """tests/assets/pickapic_tiny is what make_assets.py writes (re-run it after changes)."""
    fresh = write_fake_pickapic(
        tmp_path, {"train": 64, "validation_unique": 8}, image_size=16, seed=0, num_corrupt=1
    )
    for split, paths in fresh.items():
        for path in paths:
            committed = pq.read_table(tiny_dir / split / path.name)
            assert committed.equals(pq.read_table(path))
    total = sum(p.stat().st_size for p in tiny_dir.rglob("*.parquet"))
    assert total < 200 * 1024


def test_too_many_corrupt_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="num_corrupt"):
        write_fake_pickapic(tmp_path, {"train": 4}, tie_fraction=0.5, num_corrupt=3)


def test_unknown_layout_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of splits, hub"):
        write_fake_pickapic(tmp_path, {"train": 4}, layout="flat")
