"""Pick-a-Pic without image bytes: ``image_root`` path mapping, column errors, and the same batches
as the shards with bytes (``write_fake_pickapic(images=False)``)."""

import pandas as pd
import pytest
import torch

from lightning_pref.data import (
    PickAPicDataModule,
    read_no_images,
    resolve_image_path,
    write_fake_pickapic,
)
from lightning_pref.errors import DataError

UID = "0a1b2c3d-0000-4000-8000-000000000001"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_longest_existing_tail_wins(tmp_path):
    stored = "/mnt/qb/work/run7/img/00001.jpg"
    assert resolve_image_path(stored, tmp_path) == tmp_path / "00001.jpg"  # missing: basename
    flat = _touch(tmp_path / "00001.jpg")
    assert resolve_image_path(stored, tmp_path) == flat
    nested = _touch(tmp_path / "img" / "00001.jpg")
    assert resolve_image_path(stored, tmp_path) == nested
    full = _touch(tmp_path / "mnt/qb/work/run7/img/00001.jpg")
    assert resolve_image_path(stored, tmp_path) == full
    assert resolve_image_path("img/00001.jpg", tmp_path) == nested  # a relative path
    assert resolve_image_path(str(full), tmp_path / "none") == tmp_path / "none" / "00001.jpg"


def test_urls_blank_cells_and_dot_dot(tmp_path):
    url = f"https://text-to-image-human-preferences.s3.us-east-2.amazonaws.com/images/{UID}.png"
    flat = _touch(tmp_path / f"{UID}.png")
    assert resolve_image_path(url, tmp_path) == flat
    nested = _touch(tmp_path / "images" / f"{UID}.png")
    assert resolve_image_path(url + "?x=1", tmp_path) == nested
    assert resolve_image_path("https://h/a%20b/c%201.png", tmp_path) == tmp_path / "c 1.png"
    assert resolve_image_path("  ", tmp_path) == tmp_path  # no file: counted as missing
    assert resolve_image_path("../../etc/passwd", tmp_path) == tmp_path / "passwd"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_missing_column_is_named(tmp_path, suffix):
    frame = pd.DataFrame({"caption": ["a"], "image_0_url": ["x.png"], "label_0": [1.0]})
    path = tmp_path / f"pairs{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match="missing the column 'image_1_url'") as err:
        read_no_images([str(path)], tmp_path)
    assert "\n" not in str(err.value)


def test_bad_files_and_options_are_one_line_errors(tmp_path):
    (tmp_path / "pairs.tsv").write_text("caption\n")
    with pytest.raises(DataError, match="must be .csv or .parquet, got '.tsv'"):
        read_no_images([str(tmp_path / "pairs.tsv")], tmp_path)
    with pytest.raises(DataError, match="does not support streaming"):
        PickAPicDataModule(train_files="x.csv", image_root=str(tmp_path), streaming=True)
    data = PickAPicDataModule(dataset_name="yuvalkirstain/pickapic_v2_no_images", image_root=".")
    with pytest.raises(DataError, match="image_root needs local .csv/.parquet files"):
        data.setup("fit")


def _module(**kwargs) -> PickAPicDataModule:
    return PickAPicDataModule(resolution=16, proportion_empty_prompts=0.5, batch_size=4, **kwargs)


def test_no_images_shards_give_the_batches_of_the_shards_with_bytes(tmp_path):
    counts = {"train": 24, "validation_unique": 8}
    write_fake_pickapic(tmp_path / "v2", counts, seed=5, num_corrupt=2)
    write_fake_pickapic(tmp_path / "ni", counts, seed=5, num_corrupt=2, layout="hub", images=False)
    v2, root = tmp_path / "v2", tmp_path / "ni" / "images"
    bytes_dm = _module(
        train_files=str(v2 / "train"), val_files=str(v2 / "validation_unique"), seed=1
    )
    files_dm = _module(
        dataset_name=str(tmp_path / "ni"),
        val_split="validation_unique",
        image_root=str(root),
        seed=1,
    )
    for dm in (bytes_dm, files_dm):
        dm.setup("fit")
    assert files_dm.ties_dropped == bytes_dm.ties_dropped == {"train": 3, "validation": 1}
    assert files_dm.rows_missing_files == {"train": 0, "validation": 0}
    for one, two in zip(bytes_dm.train_dataloader(), files_dm.train_dataloader(), strict=True):
        assert one.captions == two.captions and one.num_skipped == two.num_skipped
        assert torch.equal(one.pixels_w, two.pixels_w) and torch.equal(one.pixels_l, two.pixels_l)
    train_set = files_dm.train_set
    skipped = [i for i in range(len(train_set)) if train_set[i] is None]
    assert len(skipped) == 2  # the corrupt images, written as they are
    val = list(zip(bytes_dm.val_dataloader(), files_dm.val_dataloader(), strict=True))
    assert len(val) == 2  # 7 pairs, batch_size 4
    for one, two in val:
        assert torch.equal(one.pixels_w, two.pixels_w) and one.captions == two.captions


def test_missing_image_files_are_counted_and_skipped(tmp_path, caplog):
    files = write_fake_pickapic(tmp_path, {"train": 8}, tie_fraction=0.25, images=False)
    rows = pd.read_parquet(files["train"]).to_dict("records")
    kept = [r for r in rows if r["label_0"] != 0.5]
    (tmp_path / "images" / f"{kept[0]['image_0_uid']}.png").unlink()
    (tmp_path / "images" / f"{kept[1]['image_1_uid']}.png").unlink()
    tie = next(r for r in rows if r["label_0"] == 0.5)
    (tmp_path / "images" / f"{tie['image_1_uid']}.png").unlink()  # a tie: dropped, not missing
    dm = _module(train_files=str(tmp_path / "train"), image_root=str(tmp_path / "images"))
    dm.batch_size = 6
    with caplog.at_level("WARNING", logger="lightning_pref.data"):
        dm.setup("fit")
    assert dm.ties_dropped == {"train": 2} and dm.rows_missing_files == {"train": 2}
    assert "2 of 6 train rows" in caplog.text
    (batch,) = list(dm.train_dataloader())
    assert batch.num_skipped == 2 and len(batch.captions) == 4
    for path in (tmp_path / "images").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="none of its image files exist.*check image_root"):
        _module(train_files=str(tmp_path / "train"), image_root=str(tmp_path / "images")).setup(
            "fit"
        )


def test_the_docs_yaml_snippet_builds_the_data_module():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    section = text[text.index("**Pick-a-Pic without images") :]
    snippet = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["data"]
    assert snippet["class_path"] == "lightning_pref.data.PickAPicDataModule"
    dm = PickAPicDataModule(**snippet["init_args"])
    assert dm.image_root == "/data/pickapic_images" and dm.train_files == "my_prefs/train.csv"
