"""Writes tests/assets/pair_folder/, the committed example of a user's image-pair folder.

Run from anywhere: ``python tests/assets/make_pair_folder.py``. 12 pairs of 16x16 PNGs in
``images/`` and ``pairs.csv`` (``caption,image_w,image_l,label,split``): 10 train rows (labels
1.0, blank = 1.0, 0.0 = the second image wins, one 0.5 tie, one soft 0.75, two blank splits) and
2 validation rows, about 5 KB. The preferred image has a darker background (a taste the
captions never state, as in MiniPick). Seeded: the same library versions give the same bytes.
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "pair_folder"
SIZE = 16
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square")
# (label cell, split cell) per pair; label < 0.5 means image_l is the preferred one
ROWS = [
    ("1.0", "train"),
    ("", "train"),
    ("0.0", "train"),
    ("1.0", ""),
    ("1.0", "train"),
    ("0.5", "train"),
    ("", "train"),
    ("0.75", "train"),
    ("0.0", ""),
    ("1.0", "train"),
    ("1.0", "validation"),
    ("", "validation"),
]


def draw(rng: random.Random, shape: str, colour: str, background: int) -> Image.Image:
    """One shape on a grey background of the given brightness, with a little pixel noise."""
    img = Image.new("RGB", (SIZE, SIZE), (background,) * 3)
    for _ in range(12):  # a few noisy pixels, so the images are not trivially compressible
        img.putpixel((rng.randrange(SIZE), rng.randrange(SIZE)), (rng.randrange(256),) * 3)
    extent = rng.randint(6, 10)
    x0, y0 = rng.randint(0, SIZE - extent), rng.randint(0, SIZE - extent)
    box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
    pen = ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    else:
        pen.rectangle(box, fill=COLOURS[colour])
    return img


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    rng = random.Random(0)
    lines = [("caption", "image_w", "image_l", "label", "split")]
    for i, (label, split) in enumerate(ROWS):
        shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        dark, bright = rng.randint(10, 60), rng.randint(150, 240)
        good, bad = draw(rng, shape, colour, dark), draw(rng, shape, colour, bright)
        first, second = (bad, good) if label == "0.0" else (good, bad)
        names = (f"images/pair{i:02d}_a.png", f"images/pair{i:02d}_b.png")
        first.save(OUT / names[0], format="PNG")
        second.save(OUT / names[1], format="PNG")
        caption = f"a {colour} {shape}, centred" if i == 4 else f"a {colour} {shape}"
        lines.append((caption, *names, label, split))
    with (OUT / "pairs.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(lines)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(ROWS)} pairs, {total / 1024:.1f} KiB in {OUT}")


if __name__ == "__main__":
    main()
