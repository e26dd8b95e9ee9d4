"""The Pick-a-Pic ``no_images`` layout on real human preference rows (README section 1).

``pickapic/d3po_human_prefs_pickscore_schema.csv`` has the columns of ``pickapic_v2_no_images``
(``caption,caption_source,image_0_url,image_1_url,label_0,label_1,...``) and absolute image paths
from the author's cluster (``/mnt/qb/.../text2image_evaluation/img/00000.jpg``). 40 of its rows
(20 labelled 0/1, 10 labelled 1/0, 10 ties) are read from a CSV and from a parquet file with the
images written to ``image_root`` at the tails of those paths; some images are missing or corrupt.
"""

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_pref.data import PickAPicDataModule

CSV_NAME = "pickapic/d3po_human_prefs_pickscore_schema.csv"
HEADER = "caption,caption_source,image_0_url,image_1_url,label_0,label_1,num_example_per_prompt,"
RED, BLUE = (255, 0, 0), (0, 0, 255)  # image_0, image_1
MISSING = {("0.0", 0): [1], ("0.0", 1): [1], ("0.0", 2): [0, 1], ("1.0", 0): [0], ("1.0", 1): [0]}
"""(label_0, n-th row with that label) -> the images not written: 5 non-tie rows."""
CORRUPT = ("0.0", 4)  # its image_0 is half a PNG: exists, but cannot be decoded
TIE_MISSING = ("0.5", 0)  # a tie with a missing image: dropped as a tie, not counted as missing


@pytest.fixture(scope="module")
def real_rows(realfiles) -> list[dict[str, str]]:
    path = realfiles / CSV_NAME
    with path.open(newline="", encoding="utf-8") as f:
        assert f.readline().startswith(HEADER)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500
    return rows


def _subset(rows: list[dict[str, str]]) -> list[tuple[dict[str, str], tuple[str, int]]]:
    """The first 20 rows labelled 0/1, 10 labelled 1/0 and 10 ties, in file order, keyed."""
    wanted, seen, picked = {"0.0": 20, "1.0": 10, "0.5": 10}, {"0.0": 0, "1.0": 0, "0.5": 0}, []
    captions = [r["caption"] for r in rows]
    for row in rows:
        label = row["label_0"]
        if seen[label] < wanted[label] and captions.count(row["caption"]) == 1:
            picked.append((row, (label, seen[label])))
            seen[label] += 1
    assert seen == wanted
    return picked


def _png(path: Path, colour: tuple[int, int, int], size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")


def _write_images(picked, root: Path) -> None:
    """Image 0 red, image 1 blue; even rows under ``img/`` (2 components), odd ones flat."""
    for n, (row, key) in enumerate(picked):
        skip = MISSING.get(key, [0] if key == TIE_MISSING else [])
        for k, colour in ((0, RED), (1, BLUE)):
            parts = Path(row[f"image_{k}_url"]).parts
            path = root.joinpath(*parts[-2:]) if n % 2 == 0 else root / parts[-1]
            if k not in skip:
                _png(path, colour)
            if key == CORRUPT and k == 0:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(params=["csv", "parquet"])
def no_images_data(request, real_rows, tmp_path) -> tuple[Path, Path, list]:
    """(data file, image_root, picked rows) for the 40 rows, as CSV or parquet."""
    picked = _subset(real_rows)
    source = tmp_path / "subset.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(real_rows[0]))
        writer.writeheader()
        writer.writerows(row for row, _ in picked)
    root = tmp_path / "images"
    _write_images(picked, root)
    if request.param == "csv":
        return source, root, picked
    import pandas as pd

    frame = pd.read_csv(source)
    assert str(frame["label_0"].dtype) == "float64"
    frame.to_parquet(tmp_path / "subset.parquet", index=False)
    return tmp_path / "subset.parquet", root, picked


def test_real_no_images_rows_counts_and_winners(no_images_data):
    data_file, root, picked = no_images_data
    ties = [r for r, _ in picked if (r["label_0"], r["label_1"]) == ("0.5", "0.5")]
    assert len(picked) == 40 and len(ties) == 10
    dm = PickAPicDataModule(
        train_files=str(data_file),
        image_root=str(root),
        resolution=8,
        hflip=False,
        proportion_empty_prompts=0.0,
        batch_size=30,
        seed=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 30  # 40 rows - 10 ties
    assert dm.ties_dropped == {"train": 10}
    assert dm.rows_missing_files == {"train": 5}  # the tie with a missing image is not counted
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_skipped == 6  # 5 missing + 1 corrupt
    assert len(batch.captions) == 24 and batch.pixels_w.shape == (24, 3, 8, 8)
    assert torch.equal(batch.pref_prob, torch.ones(24))
    label_of = {row["caption"]: row["label_0"] for row, _ in picked}
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1)
    winners = {"1.0": 0, "0.0": 0}
    for caption, pixels_w, pixels_l in zip(
        batch.raw_captions, batch.pixels_w, batch.pixels_l, strict=True
    ):
        label_0 = label_of[caption]
        expected_w, expected_l = (red, blue) if label_0 == "1.0" else (blue, red)
        assert torch.allclose(pixels_w, expected_w.expand(3, 8, 8), atol=0.02), caption
        assert torch.allclose(pixels_l, expected_l.expand(3, 8, 8), atol=0.02), caption
        winners[label_0] += 1
    assert winners == {"1.0": 8, "0.0": 16}  # label_0 = 1.0: image 0 wins (2 of 10 missing)
