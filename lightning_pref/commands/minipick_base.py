"""``python -m lightning_pref minipick-base``: rebuild MiniPick's committed base model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lightning_pref.cli import parse_dataclass
from lightning_pref.minipick.base_weights import (
    BASE_SHA256,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    build_base_weights,
)

__all__ = ["MiniPickBaseArgs", "main"]


@dataclass
class MiniPickBaseArgs:
    """Pretrain MiniPick's base model from scratch (about 7 min on 2 CPU cores).

    Writes base.safetensors and base.json (settings, SHA-256, test-prompt quality).

    Attributes:
        out: output folder; default the committed weights' folder inside the package.
    """

    out: Path | None = None


def main(argv: list[str]) -> None:
    """``python -m lightning_pref minipick-base``: rebuild the committed base from scratch."""
    args = parse_dataclass(MiniPickBaseArgs, argv, "python -m lightning_pref minipick-base")
    out = Path(args.out) if args.out is not None else WEIGHTS_DIR
    start = time.perf_counter()
    record = build_base_weights(out)
    quality = record["test_quality"]
    print(
        f"wrote {out / WEIGHTS_FILE.name} ({record['bytes'] / 1e6:.2f} MB, sha256 "
        f"{record['sha256']}) in {time.perf_counter() - start:.0f} s; test prompts: fidelity "
        f"{quality['fidelity_mean']:.3f}, taste {quality['taste_mean']:.3f}, gold "
        f"{quality['gold_mean']:.3f}"
    )
    if out.resolve() == WEIGHTS_DIR.resolve() and record["sha256"] != BASE_SHA256:
        print(
            f'pin the new hash: BASE_SHA256 = "{record["sha256"]}" in '
            "lightning_pref/minipick/base_weights.py"
        )
