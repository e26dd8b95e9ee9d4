"""SmPO's label smoothing by a scorer: score Pick-a-Pic pairs offline, then smooth the labels.

SmPO (METHODS §4.1; official ``preprocessing.py`` and ``train.py::preprocess_train``) scores every
Pick-a-Pic v2 pair once with PickScore's raw cosine (no logit scale). At train time it keeps only
pairs whose *human* label is not a tie, orders winner/loser by the score (``s0 > s1``: ``jpg_0``
wins, else ``jpg_1``) and sets ``p = exp(n_w) / (exp(n_w) + exp(n_l)) = sigmoid(n_w - n_l)`` with
``n = (s - score_min) / (score_max - score_min)``. The constants are hard-coded there: the global
min and max of PickScore raw cosines over Pick-a-Pic v2, so ``p`` lies in [0.5, sigmoid(1) =
0.7311]. :func:`score_pairs` is the offline step for any :class:`~lightning_pref.scoring.Scorer`;
:class:`ScoreLabels` is the train-time step, used by ``PairBuilder`` and the data modules.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_pref.data.parquet import SCORE_COLUMNS, check_parquet_columns, resolve_data_files
from lightning_pref.errors import ConfigError
from lightning_pref.scoring.base import Scorer

__all__ = [
    "SCORES_FILE",
    "SMPO_SCORE_MAX",
    "SMPO_SCORE_MIN",
    "ScoreLabels",
    "find_scores_file",
    "score_pairs",
]

logger = logging.getLogger("lightning_pref.data")
SCORES_FILE = "scores.json"
SMPO_SCORE_MIN = 0.11543526500463486  # SmPO train.py: global min of PickScore raw cosines
SMPO_SCORE_MAX = 0.28201571106910706  # SmPO train.py: global max
MAX_WARNINGS = 5  # undecodable rows warned about one by one; later ones only counted
_SEARCH_LEVELS = 3  # scores.json is looked for in a shard's folder and its two parents


def find_scores_file(files: Sequence[str | Path]) -> Path | None:
    """The ``scores.json`` nearest the first shard: its folder, then up to two parents."""
    if not files:
        return None
    folder = Path(files[0]).expanduser().resolve().parent
    for candidate in [folder, *folder.parents][:_SEARCH_LEVELS]:
        if (candidate / SCORES_FILE).is_file():
            return candidate / SCORES_FILE
    return None


@dataclass
class ScoreLabels:
    """Orders each pair by its scores and smooths its label (SmPO, METHODS §4.1).

    ``pref_prob = sigmoid(|score_0 - score_1| / (score_max - score_min))``; the higher score wins
    (``score_0 > score_1``: ``jpg_0``, otherwise ``jpg_1``, as SmPO's ``ps_label_0 = s0 > s1``).
    Human ties are dropped. The defaults are SmPO's constants for PickScore's *raw cosine*; for
    another scorer set both to None to read the observed range from ``scores.json``.
    """

    score_min: float | None = SMPO_SCORE_MIN
    """Score mapped to n = 0; None = ``score_min`` of the data's ``scores.json``."""
    score_max: float | None = SMPO_SCORE_MAX
    """Score mapped to n = 1; None = ``score_max`` of the data's ``scores.json``."""

    def __post_init__(self) -> None:
        """Checks that the range is not empty when both ends are given."""
        if self.score_min is not None and self.score_max is not None:
            if not self.score_max > self.score_min:
                raise ConfigError(
                    f"score_labels: score_max ({self.score_max}) must exceed score_min "
                    f"({self.score_min})"
                )

    @property
    def span(self) -> float:
        """``score_max - score_min``; raises ``ConfigError`` while either is unresolved."""
        if self.score_min is None or self.score_max is None:
            raise ConfigError(
                "score_labels: score_min/score_max are None and were not resolved from a "
                f"{SCORES_FILE}; call resolve() or set them"
            )
        return self.score_max - self.score_min

    def resolve(self, files: Sequence[str | Path]) -> ScoreLabels:
        """Fills None constants from the ``scores.json`` next to ``files`` (see ``score_pairs``).

        Args:
            files: The shards the labels are for (the first one is used to find the file).

        Returns:
            A copy with both constants set.

        Raises:
            ConfigError: If a constant is None and no usable ``scores.json`` is found.
        """
        path = find_scores_file(files)
        stats = json.loads(path.read_text()) if path is not None else {}
        values = {"score_min": self.score_min, "score_max": self.score_max}
        for key, value in values.items():
            if value is None and stats.get(key) is None:
                where = f"'{path}' has no {key}" if path else f"no {SCORES_FILE} next to the shards"
                raise ConfigError(
                    f"score_labels.{key} is None and {where}; set score_labels.{key} or score "
                    "the data with python -m lightning_pref score-pairs"
                )
            values[key] = stats[key] if value is None else value
        resolved = replace(self, **values)
        if path is not None and None not in (stats.get("score_min"), stats.get("score_max")):
            resolved._warn_if_off_scale(stats["score_min"], stats["score_max"], path)
        return resolved

    def _warn_if_off_scale(self, low: float, high: float, path: Path) -> None:
        """Warns when the observed scores lie well outside [score_min, score_max]."""
        slack = 0.1 * self.span
        assert self.score_min is not None and self.score_max is not None
        if low < self.score_min - slack or high > self.score_max + slack:
            logger.warning(
                "scores in %s span [%.4g, %.4g], well outside score_min/score_max [%.4g, %.4g]: "
                "is the scorer on another scale? SmPO's constants need PickScore's raw cosine "
                "(logit_scale: false); set both to None to use the observed range",
                path,
                low,
                high,
                self.score_min,
                self.score_max,
            )

    def label(self, score_0: Any, score_1: Any) -> tuple[bool, float]:
        """``(swap, pref_prob)`` of one pair; ``swap`` means ``jpg_1`` is the winner.

        Raises:
            ValueError: If a score is missing or not finite (the row is skipped and counted).
        """
        try:
            s0, s1 = float(score_0), float(score_1)
        except (TypeError, ValueError):
            raise ValueError(f"scores are not numbers: {score_0!r}, {score_1!r}") from None
        if not (math.isfinite(s0) and math.isfinite(s1)):
            raise ValueError(f"scores are not finite: {s0}, {s1} (unscorable row)")
        n_diff = abs(s0 - s1) / self.span  # n_w - n_l >= 0
        return not s0 > s1, 1.0 / (1.0 + math.exp(-n_diff))

    def labels(self, scores_0: Tensor, scores_1: Tensor) -> tuple[Tensor, Tensor]:
        """Vectorised :meth:`label`: ``swap`` ``[N]`` bool, ``pref_prob`` ``[N]`` (NaN if NaN)."""
        swap = ~(scores_0 > scores_1)  # [N]
        pref_prob = torch.sigmoid((scores_0 - scores_1).abs() / self.span)  # [N]
        return swap, pref_prob


def _decode_pair(jpg_0: Any, jpg_1: Any) -> tuple[Tensor, Tensor]:
    """Both images of a row at their stored size, ``[3, H, W]`` in [-1, 1] (ValueError if bad)."""
    from lightning_pref.data.transforms import decode_image, to_tensor

    return to_tensor(decode_image(jpg_0)), to_tensor(decode_image(jpg_1))


def _score_images(
    scorer: Scorer, images: list[Tensor], captions: list[str], device: torch.device
) -> Tensor:
    """``[N]`` scores, one scorer call per image size (images are never resized here)."""
    scores = torch.full((len(images),), float("nan"), dtype=torch.float64)  # [N]
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for indices in by_size.values():
        batch = torch.stack([images[i] for i in indices]).to(device)  # [n, 3, H, W]
        out = scorer(batch, [captions[i] for i in indices])  # [n]
        scores[indices] = out.detach().double().cpu()
    return scores


def _score_table(
    table: Any, scorer: Scorer, batch_size: int, device: torch.device, where: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of ``jpg_0`` and ``jpg_1`` of every row, ``[R]`` each (NaN: bad row), and skips."""
    captions = ["" if c is None else str(c) for c in table.column("caption").to_pylist()]
    scores = np.full((2, table.num_rows), np.nan)  # [2, R]
    skipped = 0
    for start in range(0, table.num_rows, batch_size):
        part = table.slice(start, batch_size)
        rows, images = [], []
        for offset, (jpg_0, jpg_1) in enumerate(
            zip(part.column("jpg_0").to_pylist(), part.column("jpg_1").to_pylist(), strict=True)
        ):
            try:
                images.extend(_decode_pair(jpg_0, jpg_1))
            except ValueError as err:
                skipped += 1
                if skipped <= MAX_WARNINGS:
                    logger.warning("cannot score row %d of %s: %s", start + offset, where, err)
                continue
            rows.append(start + offset)
        if rows:
            texts = [captions[r] for r in rows for _ in range(2)]  # jpg_0, jpg_1 of each row
            out = _score_images(scorer, images, texts, device).view(len(rows), 2)  # [n, 2]
            scores[:, rows] = out.T.numpy()
    return scores[0], scores[1], skipped


def _score_file(
    src: Path, dst: Path, scorer: Scorer, batch_size: int, device: torch.device, bar: Any
) -> dict[str, Any]:
    """Writes ``src`` plus score columns to ``dst`` row group by row group; returns its stats.

    Stats: ``count`` (rows), ``rows_skipped`` (NaN rows), ``low``/``high`` (finite scores).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(src)
    schema = source.schema_arrow
    for name in SCORE_COLUMNS:  # re-scoring replaces old scores
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    schema = schema.append(pa.field("score_0", pa.float64())).append(
        pa.field("score_1", pa.float64())
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    stats = {"count": 0, "rows_skipped": 0, "low": math.inf, "high": -math.inf}
    with pq.ParquetWriter(tmp, schema) as writer:
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            table = table.drop_columns([c for c in SCORE_COLUMNS if c in table.column_names])
            s0, s1, skipped = _score_table(table, scorer, batch_size, device, str(src))
            table = table.append_column("score_0", pa.array(s0, pa.float64()))
            writer.write_table(table.append_column("score_1", pa.array(s1, pa.float64())))
            finite = np.concatenate([s0, s1])[np.isfinite(np.concatenate([s0, s1]))]
            if finite.size:
                stats["low"] = min(stats["low"], float(finite.min()))
                stats["high"] = max(stats["high"], float(finite.max()))
            stats["count"] += table.num_rows
            stats["rows_skipped"] += skipped
            bar.update(table.num_rows)
    os.replace(tmp, dst)
    return stats


def _relative_names(spec: str | list[str], files: list[str]) -> list[str]:
    """Output names: relative to the input folder, else to the files' common folder."""
    if isinstance(spec, str) and os.path.isdir(os.path.expanduser(spec)):
        base = os.path.expanduser(spec)
    else:
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return [os.path.relpath(os.path.abspath(f), os.path.abspath(base)) for f in files]


def score_pairs(
    input: str | list[str],
    output: str,
    scorer: Scorer,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Adds ``score_0``/``score_1`` (the scorer on ``jpg_0``/``jpg_1`` and the caption) to shards.

    Each shard is copied to ``output`` under its name relative to ``input``, with every row and
    column, row group by row group, plus the two float64 score columns. A row with an undecodable
    image gets NaN scores, a warning and a count. ``output/scores.json`` records ``count`` (rows
    written), ``rows_skipped`` (rows with NaN scores), ``score_min``/``score_max`` (over all finite
    scores; what ``ScoreLabels(None, None)`` reads), ``scorer`` (class name) and ``files``.

    Args:
        input: Pick-a-Pic parquet files, globs or folders (a folder: ``folder/**/*.parquet``).
        output: Output folder (must differ from the input's).
        scorer: Any scorer: ``scorer(images [N, 3, H, W] in [-1, 1], captions) -> [N]``. Images
            are scored at their stored size; one call per distinct size in a batch.
        batch_size: Rows per scorer batch (2 images each).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...

    Returns:
        The content of ``scores.json``.
    """
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    files = resolve_data_files(input, "input")
    check_parquet_columns(files)
    names = _relative_names(input, files)
    out = Path(output).expanduser()
    targets = [out / name for name in names]
    if any(t.resolve() == Path(f).resolve() for t, f in zip(targets, files, strict=True)):
        raise ConfigError(f"score-pairs: output '{output}' would overwrite the input shards")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if device == "auto" else device)
    scorer = scorer.to(dev).eval()
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    with torch.inference_mode(), tqdm(total=total, desc="score-pairs", unit="pair") as bar:
        stats = [
            _score_file(Path(src), dst, scorer, batch_size, dev, bar)
            for src, dst in zip(files, targets, strict=True)
        ]
    result = _summary(stats, type(scorer).__name__, names)
    if result["rows_skipped"]:
        logger.warning("score-pairs: %d row(s) could not be scored", result["rows_skipped"])
    (out / SCORES_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _summary(stats: list[dict[str, Any]], scorer: str, names: list[str]) -> dict[str, Any]:
    """The ``scores.json`` content from the per-file stats of :func:`_score_file`."""
    low = min((s["low"] for s in stats), default=math.inf)
    high = max((s["high"] for s in stats), default=-math.inf)
    return {
        "count": sum(s["count"] for s in stats),
        "score_min": low if math.isfinite(low) else None,
        "score_max": high if math.isfinite(high) else None,
        "scorer": scorer,
        "rows_skipped": sum(s["rows_skipped"] for s in stats),
        "files": names,
    }
