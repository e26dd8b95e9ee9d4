"""Seeded synthetic Pick-a-Pic v2 shards for tests and CPU smoke runs.

The files use the column names, order and dtypes of ``yuvalkirstain/pickapic_v2`` (its dataset
card lists the features; ``images=False`` gives those of ``pickapic_v2_no_images``: the same
without ``jpg_0``/``jpg_1``), so every code path that reads the real data reads these too. With
``layout="hub"`` the shards are named as in the hub repositories, ``data/<split>-NNNNN-of-NNNNN-
<16 hex>.parquet``. Images are tiny JPEGs of one coloured shape on a coloured background; both
images of a pair share the caption. The output is byte-identical for a given seed and library
versions.
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

__all__ = ["LAYOUTS", "PICKAPIC_NO_IMAGES_SCHEMA", "PICKAPIC_SCHEMA", "write_fake_pickapic"]

PICKAPIC_SCHEMA = pa.schema(
    [
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
        ("__index_level_0__", pa.int64()),
    ]
)
"""Pick-a-Pic v2 features, in the order of the dataset card."""

PICKAPIC_NO_IMAGES_SCHEMA = pa.schema(
    [f for f in PICKAPIC_SCHEMA if f.name not in ("jpg_0", "jpg_1")]
)
"""Pick-a-Pic v2_no_images features: those of v2 without ``jpg_0``/``jpg_1``, in the same order."""

LAYOUTS = ("splits", "hub")
"""``splits``: ``<split>/<split>-NNNNN-of-NNNNN.parquet``; ``hub``: the hub repositories' names."""

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
_SHAPES = ("circle", "square", "triangle")
_MODELS = (
    "CompVis/stable-diffusion-v1-4",
    "stabilityai/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-xl-beta-v2-2-2",
    "dreamlike-art/dreamlike-photoreal-2.0",
)
_DEFAULT_PAIRS = {"train": 48, "validation_unique": 8}
_EPOCH = datetime(2023, 4, 1)


def _shape_jpeg(rng: random.Random, size: int, shape: str, fill: str, background: str) -> bytes:
    """Draws one shape at a random place and size and returns the JPEG bytes."""
    img = Image.new("RGB", (size, size), _COLOURS[background])
    draw = ImageDraw.Draw(img)
    extent = rng.randint(max(2, size // 3), max(3, size - 2))
    x0, y0 = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
    if shape == "circle":
        draw.ellipse(box, fill=_COLOURS[fill])
    elif shape == "square":
        draw.rectangle(box, fill=_COLOURS[fill])
    else:
        draw.polygon(
            [(x0, box[3]), (box[2], box[3]), ((x0 + box[2]) // 2, y0)], fill=_COLOURS[fill]
        )
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _split_rows(split: str, count: int, image_size: int, seed: int, tie_fraction: float) -> dict:
    """Builds the columns of one split as Python lists."""
    rng = random.Random(f"{seed}/{split}")
    ties = set(rng.sample(range(count), round(count * tie_fraction)))
    cols: dict[str, list[Any]] = {name: [] for name in PICKAPIC_SCHEMA.names}
    for i in range(count):
        shape, fill, background = (
            rng.choice(_SHAPES),
            *rng.sample(sorted(_COLOURS), 2),
        )
        uid_0, uid_1 = _uid(rng), _uid(rng)
        label_0 = 0.5 if i in ties else float(rng.random() < 0.5)
        best = "" if i in ties else (uid_0 if label_0 == 1.0 else uid_1)
        values = {
            "are_different": True,
            "best_image_uid": best,
            "caption": f"a {fill} {shape} on a {background} background, {split} scene {i}",
            "created_at": _EPOCH + timedelta(minutes=i),
            "has_label": True,
            "image_0_uid": uid_0,
            "image_0_url": f"https://images.invalid/{uid_0}.png",
            "image_1_uid": uid_1,
            "image_1_url": f"https://images.invalid/{uid_1}.png",
            "jpg_0": _shape_jpeg(rng, image_size, shape, fill, background),
            "jpg_1": _shape_jpeg(rng, image_size, shape, fill, background),
            "label_0": label_0,
            "label_1": 1.0 - label_0,
            "model_0": rng.choice(_MODELS),
            "model_1": rng.choice(_MODELS),
            "ranking_id": 100_000 + i,
            "user_id": rng.randint(1, 500),
            "num_example_per_prompt": 1,
            "__index_level_0__": i,
        }
        for name, value in values.items():
            cols[name].append(value)
    return cols


def _corrupt(cols: dict, num_corrupt: int, seed: int) -> None:
    """Truncates one JPEG in each of ``num_corrupt`` non-tie rows, in place."""
    hard = [i for i, label in enumerate(cols["label_0"]) if label in (0.0, 1.0)]
    if num_corrupt > len(hard):
        raise ValueError(f"num_corrupt={num_corrupt} exceeds the {len(hard)} non-tie train rows")
    rng = random.Random(f"{seed}/corrupt")
    for i in sorted(rng.sample(hard, num_corrupt)):
        column = rng.choice(("jpg_0", "jpg_1"))
        cols[column][i] = cols[column][i][: len(cols[column][i]) // 2]


def _shard_path(out: Path, split: str, k: int, num_shards: int, layout: str, tag: str) -> Path:
    """Where shard ``k`` of ``split`` goes (see ``LAYOUTS``); ``tag`` seeds the hub name's hash."""
    name = f"{split}-{k:05d}-of-{num_shards:05d}"
    if layout == "splits":
        return out / split / f"{name}.parquet"
    digest = hashlib.sha256(f"{tag}/{name}".encode()).hexdigest()[:16]
    return out / "data" / f"{name}-{digest}.parquet"


def _write_images(cols: dict, folder: Path) -> None:
    """Moves ``jpg_0``/``jpg_1`` out of ``cols`` into ``folder/<image uid>.png`` files.

    Each image is re-encoded as PNG (the same pixels as the JPEG decodes to), as the ``*_url``
    columns name ``<uid>.png``; a corrupt (truncated) JPEG is written as it is.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for k in (0, 1):
        for uid, data in zip(cols[f"image_{k}_uid"], cols.pop(f"jpg_{k}"), strict=True):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    buffer = io.BytesIO()
                    img.convert("RGB").save(buffer, format="PNG")
                    data = buffer.getvalue()
            except OSError:  # truncated: keep the broken bytes
                pass
            (folder / f"{uid}.png").write_bytes(data)


def write_fake_pickapic(
    out_dir: str | Path,
    num_pairs: Mapping[str, int] | None = None,
    image_size: int = 16,
    seed: int = 0,
    tie_fraction: float = 0.125,
    num_corrupt: int = 0,
    layout: str = "splits",
    images: bool = True,
) -> dict[str, list[Path]]:
    """Writes seeded synthetic Pick-a-Pic v2 (or v2_no_images) parquet shards.

    Layout ``splits``: ``out_dir/<split>/<split>-00000-of-00001.parquet``, except ``train``, which
    is split into ``train-00000-of-00002.parquet`` and ``train-00001-of-00002.parquet``. Layout
    ``hub``: the same shards as ``out_dir/data/<split>-NNNNN-of-NNNNN-<16 hex>.parquet``, the
    names of the hub repositories (the hex part is a hash of the seed, the split and the shard).

    Args:
        out_dir: Output folder (created if needed).
        num_pairs: Pairs per split; None means ``{"train": 48, "validation_unique": 8}``.
        image_size: Side of the square JPEGs, in pixels.
        seed: Seed of every random choice; the same seed gives byte-identical files.
        tie_fraction: Fraction of each split's rows labelled 0.5/0.5.
        num_corrupt: Non-tie ``train`` rows whose ``jpg_0`` or ``jpg_1`` is cut to half its
            bytes (undecodable).
        layout: ``splits`` or ``hub`` (see above).
        images: False writes the v2_no_images columns and each image, as PNG, to
            ``out_dir/images/<image uid>.png``, where the ``*_url`` column's basename points;
            read them with ``PickAPicDataModule(image_root=out_dir/images)``.

    Returns:
        The written shards of each split.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(out_dir)
    schema = PICKAPIC_SCHEMA if images else PICKAPIC_NO_IMAGES_SCHEMA
    written: dict[str, list[Path]] = {}
    for split, count in (num_pairs or _DEFAULT_PAIRS).items():
        cols = _split_rows(split, count, image_size, seed, tie_fraction)
        if split == "train":
            _corrupt(cols, num_corrupt, seed)
        if not images:
            _write_images(cols, out / "images")
        table = pa.Table.from_pydict(cols, schema=schema)
        num_shards = 2 if split == "train" else 1
        bounds = [round(k * count / num_shards) for k in range(num_shards + 1)]
        written[split] = []
        for k in range(num_shards):
            path = _shard_path(out, split, k, num_shards, layout, f"{seed}/{images}")
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path)
            written[split].append(path)
    return written
