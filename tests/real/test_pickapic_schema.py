"""The fake Pick-a-Pic shards against the real dataset cards (README section 1).

``pickapic/pickapic_dataset_card_schema_TRANSCRIBED.md`` holds the ``dataset_info`` YAML of
``yuvalkirstain/pickapic_v2`` (features in order, with dtypes, and splits), says that
``pickapic_v2_no_images`` has the same columns except ``jpg_0``/``jpg_1``, and lists the real shard
file names. ``write_fake_pickapic`` must write exactly those columns, in that order, with those
arrow types, and (``layout="hub"``) shards named like the real ones.
"""

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lightning_pref.data import local_split_files, write_fake_pickapic

CARD = "pickapic/pickapic_dataset_card_schema_TRANSCRIBED.md"
SHARD = re.compile(r"(?:data/)?([a-z_]+)-(\d{5})-of-(\d{5})-([0-9a-f]{16})\.parquet")
"""A shard name of the hub repositories: ``data/<split>-NNNNN-of-NNNNN-<16 hex>.parquet``."""


def _yaml_after(text: str, heading: str) -> dict:
    """The first ```yaml block after the line that starts with ``heading``."""
    start = text.index(heading)
    block = re.search(r"```yaml\n(.*?)```", text[start:], re.S)
    assert block, heading
    lines = block.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return yaml.safe_load("\n".join(line[indent:] for line in lines))


@pytest.fixture(scope="module")
def card(realfiles) -> dict:
    """``features`` ([(name, dtype)]), ``splits``, ``no_images_drop``, ``no_images_splits``,
    ``shards`` (the real no_images shard names) parsed from the transcribed card."""
    text = (realfiles / CARD).read_text(encoding="utf-8")
    info = _yaml_after(text, "## pickapic_v2 (with images)")["dataset_info"]
    heading = re.search(r"^## pickapic_v2_no_images: same columns except (.*)$", text, re.M)
    assert heading, "the card no longer describes pickapic_v2_no_images"
    listing = text[text.index("Real shard file names") : text.index("The pickapic_v2 shards with")]
    return {
        "features": [(f["name"], f["dtype"]) for f in info["features"]],
        "splits": [s["name"] for s in info["splits"]],
        "no_images_drop": re.findall(r"`([^`]+)`", heading.group(1)),
        "no_images_splits": [
            s["name"] for s in _yaml_after(text, "## pickapic_v2_no_images")["splits"]
        ],
        "shards": [m.group(0) for m in SHARD.finditer(listing)],
        "images_shard": SHARD.search(text[text.index("The pickapic_v2 shards with") :]).group(0),
    }


def test_the_card_parses_into_the_known_schema(card):
    assert len(card["features"]) == 19
    assert card["features"][9:11] == [("jpg_0", "binary"), ("jpg_1", "binary")]
    assert ("created_at", "timestamp[ns]") in card["features"]
    assert card["features"][-1] == ("__index_level_0__", "int64")
    assert card["no_images_drop"] == ["jpg_0", "jpg_1"]
    assert card["splits"] == card["no_images_splits"]
    assert card["splits"] == ["train", "validation", "test", "validation_unique", "test_unique"]
    assert len(card["shards"]) == 6  # every real no_images shard name matches SHARD
    assert card["images_shard"] == "data/test-00000-of-00014-387db523fa7e7121.parquet"


@pytest.mark.parametrize("images", [True, False], ids=["v2", "v2_no_images"])
def test_fake_shards_have_the_cards_columns_dtypes_and_names(card, tmp_path, images):
    drop = [] if images else card["no_images_drop"]
    expected = [(n, pa.type_for_alias(d)) for n, d in card["features"] if n not in drop]
    counts = {split: 4 for split in card["splits"]}
    files = write_fake_pickapic(tmp_path, counts, image_size=8, layout="hub", images=images)
    assert list(files) == card["splits"]
    for split, paths in files.items():
        for path in paths:
            schema = pq.read_schema(path)
            assert list(zip(schema.names, schema.types, strict=True)) == expected, path.name
            name = SHARD.fullmatch(path.relative_to(tmp_path).as_posix())
            assert name and name.group(1) == split, path
    # the same number of shards per split as the real no_images repository
    real = sorted((m[1], m[3]) for m in map(SHARD.fullmatch, card["shards"]))
    fake = sorted((m[1], m[3]) for p in sum(files.values(), []) for m in [SHARD.search(p.name)])
    assert fake == real


def test_the_reader_finds_each_split_among_real_style_names(card, tmp_path):
    files = write_fake_pickapic(
        tmp_path, {split: 2 for split in card["splits"]}, layout="hub", images=False
    )
    for split, paths in files.items():  # validation must not pick up validation_unique
        assert local_split_files(str(tmp_path), split) == [str(p) for p in paths]
