"""Training MiniPickScore on the MiniPick pairs: the data, the fit loop and the asset builder."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lightning_pref.data.transforms import center_crop, decode_image, resize_short_side, to_tensor
from lightning_pref.minipick.proxy import (
    MiniPickScore,
    ProxyConfig,
    caption_contrastive_loss,
    pickscore_loss,
)
from lightning_pref.minipick.store import AssetSettings

__all__ = ["PreferencePairs", "evaluate_pairs", "fit_proxy", "load_pairs", "train_proxy"]

# Chosen on 2048 imperfect-render pairs (2 data seeds, 1024 validation pairs): 30 epochs without
# the CLIP term overfit (train 1.00, val 0.59); 10 epochs with it reach val 0.73 (label noise caps
# it at 0.82); CLIP_WEIGHT 0.25..1 and weight decay 1e-2..0.1 all give 0.72-0.73. ~10 s, 1 thread.
EPOCHS = 10
BATCH_PAIRS = 64
LR = 2e-3
WEIGHT_DECAY = 1e-2
CLIP_WEIGHT = 0.5
TRAIN_SEED = 0
EVAL_BATCH = 512


@dataclass
class PreferencePairs:
    """Labelled image pairs in memory (Pick-a-Pic's ``jpg_0``/``jpg_1``/``label_0``)."""

    images_0: Tensor  # [B, 3, S, S] in [-1, 1]
    images_1: Tensor  # [B, 3, S, S]
    captions: list[str]
    label_0: Tensor  # [B] P(image 0 preferred); 0.5 = tie
    weights: Tensor | None = None  # [B] 1 / num_example_per_prompt; None = uniform

    def __len__(self) -> int:
        return len(self.captions)


def _decode(data: bytes, size: int) -> Tensor:
    img = decode_image(data)
    if img.size != (size, size):
        img = center_crop(resize_short_side(img, size), size)
    return to_tensor(img)  # [3, S, S]


def load_pairs(pairs_dir: str | Path, split: str, image_size: int) -> PreferencePairs:
    """Read every ``<pairs_dir>/<split>/*.parquet`` shard into memory (images decoded).

    Raises:
        FileNotFoundError: if the split has no shard.
    """
    files = sorted((Path(pairs_dir) / split).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards in {Path(pairs_dir) / split}")
    wanted = ("caption", "jpg_0", "jpg_1", "label_0", "num_example_per_prompt")
    rows: dict[str, list] = {c: [] for c in wanted}
    for f in files:
        table = pq.read_table(f, columns=[c for c in wanted if c in pq.read_schema(f).names])
        for c in table.column_names:
            rows[c] += table.column(c).to_pylist()
    counts = rows["num_example_per_prompt"]  # optional: uniform weights unless every shard has it
    weights = 1.0 / torch.tensor(counts, dtype=torch.float32)  # [B] or [0]
    return PreferencePairs(
        images_0=torch.stack([_decode(b, image_size) for b in rows["jpg_0"]]),
        images_1=torch.stack([_decode(b, image_size) for b in rows["jpg_1"]]),
        captions=rows["caption"],
        label_0=torch.tensor(rows["label_0"], dtype=torch.float32),
        weights=weights if len(counts) == len(rows["caption"]) else None,
    )


@torch.no_grad()
def _scores(model: MiniPickScore, pairs: PreferencePairs) -> tuple[Tensor, Tensor]:
    ids = model.tokenize(pairs.captions)  # [B, L]
    chunks = [slice(i, i + EVAL_BATCH) for i in range(0, len(pairs), EVAL_BATCH)]
    s0 = torch.cat([model.score_ids(pairs.images_0[c], ids[c]) for c in chunks])  # [B]
    s1 = torch.cat([model.score_ids(pairs.images_1[c], ids[c]) for c in chunks])  # [B]
    return s0.cpu(), s1.cpu()


def evaluate_pairs(model: MiniPickScore, pairs: PreferencePairs) -> dict[str, float]:
    """Agreement of the score order with the labels on non-tie pairs, plus the PickScore loss.

    Returns:
        ``{"accuracy", "loss", "non_tie"}``: accuracy over pairs whose label is not 0.5 (a
        score tie counts as half right), loss over all pairs, and the number of non-tie pairs.
    """
    was_training = model.training
    model.eval()
    s0, s1 = _scores(model, pairs)  # [B], [B]
    model.train(was_training)
    decided = pairs.label_0 != 0.5  # [B]
    target = (pairs.label_0 > 0.5).float()  # [B]
    right = torch.where(s0 == s1, 0.5, ((s0 > s1).float() == target).float())  # [B]
    non_tie = int(decided.sum())
    return {
        "accuracy": float(right[decided].mean()) if non_tie else float("nan"),
        "loss": float(pickscore_loss(s0, s1, pairs.label_0, pairs.weights)),
        "non_tie": non_tie,
    }


def _batch_loss(
    model: MiniPickScore, pairs: PreferencePairs, idx: Tensor, ids: Tensor, clip_weight: float
) -> Tensor:
    both = torch.cat([pairs.images_0[idx], pairs.images_1[idx]])  # [2b, 3, S, S]
    logits = model.similarity(both, ids[idx])  # [b, 2b]
    b = len(idx)
    s0, s1 = logits[:, :b].diagonal(), logits[:, b:].diagonal()  # [b], [b]
    weights = pairs.weights[idx].to(s0.device) if pairs.weights is not None else None
    loss = pickscore_loss(s0, s1, pairs.label_0[idx].to(s0.device), weights)
    if clip_weight > 0:
        loss = loss + clip_weight * caption_contrastive_loss(logits, ids[idx])
    return loss


def fit_proxy(
    model: MiniPickScore,
    pairs: PreferencePairs,
    epochs: int = EPOCHS,
    batch_pairs: int = BATCH_PAIRS,
    lr: float = LR,
    clip_weight: float = CLIP_WEIGHT,
    seed: int = TRAIN_SEED,
) -> list[float]:
    """Train ``model`` in place (AdamW, cosine decay, seeded order); no augmentation.

    The loss is :func:`pickscore_loss` plus ``clip_weight`` times
    :func:`caption_contrastive_loss`. Horizontal flips would be wrong (captions say left/right).

    Returns:
        The mean training loss of every epoch.
    """
    steps_per_epoch = math.ceil(len(pairs) / batch_pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    ids = model.tokenize(pairs.captions)  # [B, L]
    model.train()
    history = []
    bar = tqdm(total=epochs * steps_per_epoch, desc="proxy reward", unit="step", leave=False)
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(pairs), generator=gen).split(batch_pairs):
            loss = _batch_loss(model, pairs, idx, ids, clip_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update()
        history.append(total / len(pairs))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    model.eval()
    return history


def train_proxy(pairs_dir: str | Path, out_dir: str | Path, settings: AssetSettings) -> dict:
    """Train MiniPickScore on the ``train`` pairs, evaluate on ``validation``, save to ``out_dir``.

    Returns:
        Build info: pair counts, accuracy (non-tie pairs) and loss on both splits, seconds.
    """
    start = time.perf_counter()
    train = load_pairs(pairs_dir, "train", settings.image_size)
    val = load_pairs(pairs_dir, "validation", settings.image_size)
    model = MiniPickScore(ProxyConfig(image_size=settings.image_size))
    threads, fit_start = torch.get_num_threads(), time.perf_counter()
    # Too small to gain from intra-op threads; on 2 shared cores, 2 threads took 150-210 s, not 8 s.
    torch.set_num_threads(1)
    try:
        history = fit_proxy(model, train)
    finally:
        torch.set_num_threads(threads)
    fit_seconds = time.perf_counter() - fit_start
    model.save_pretrained(out_dir)
    info = {f"train_{k}": v for k, v in evaluate_pairs(model, train).items()}  # PickScore loss
    info |= {f"val_{k}": v for k, v in evaluate_pairs(model, val).items()}
    return info | {
        "train_pairs": len(train),
        "val_pairs": len(val),
        "train_objective": history[-1],  # last epoch's mean, CLIP term included
        "epochs": EPOCHS,
        "clip_weight": CLIP_WEIGHT,
        "train_seconds": round(fit_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
