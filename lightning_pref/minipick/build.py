"""Builders of the MiniPick assets: pretrain the base model, then sample and label the pairs."""

from __future__ import annotations

import io
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from lightning_pref.data.fake import PICKAPIC_SCHEMA
from lightning_pref.minipick.model import build_minipick_components
from lightning_pref.minipick.rater import GoldRater, label_pairs, tie_margin_for_rate
from lightning_pref.minipick.store import AssetSettings
from lightning_pref.minipick.world import prompts
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.sampling import sample_images, sample_plan, sample_seeded

__all__ = [
    "ScratchMiniPickPolicy",
    "base_quality",
    "build_pairs",
    "png_bytes",
    "pretrain_base",
    "winner_shares",
]

SAMPLE_BATCH = 128  # images per sampling batch (two per caption; 256 with CFG)


class ScratchMiniPickPolicy(DiffusionPolicy):
    """A freshly initialised MiniPick model (what pretraining starts from).

    Args:
        image_size: image side in pixels.
        seed: initialisation seed.
    """

    def __init__(
        self, image_size: int = 16, seed: int = 0, unet_channels: tuple[int, ...] = (32, 64, 64)
    ) -> None:
        super().__init__(pretrained="<minipick-scratch>", check_source=False)
        self.image_size = image_size
        self.init_seed = seed
        self.unet_channels = tuple(unet_channels)

    def _load_components(self) -> DiffusionComponents:
        return build_minipick_components(
            image_size=self.image_size, block_out_channels=self.unet_channels, seed=self.init_seed
        )


def pretrain_base(out_dir: Path, settings: AssetSettings, flow: bool = False) -> dict:
    """Pretrain the base model with our Trainer + SFT on rendered scenes; save it in SD layout.

    ``flow``: MiniPick-Flow's base (:mod:`lightning_pref.minipick.flow`), the same networks and
    settings with the rectified-flow parameterisation, for ``settings.flow_base_steps`` steps.
    """
    from lightning import Trainer, seed_everything

    from lightning_pref.callbacks.progress import StepProgressBar
    from lightning_pref.minipick.flow_model import ScratchMiniPickFlowPolicy
    from lightning_pref.minipick.scenes import SceneDataModule
    from lightning_pref.modules.offline import OfflinePairModule
    from lightning_pref.objectives.sft import SFT
    from lightning_pref.training.optim import WarmupCosine

    seed_everything(settings.base_seed, verbose=False)
    scratch = ScratchMiniPickFlowPolicy if flow else ScratchMiniPickPolicy
    steps = settings.flow_base_steps if flow else settings.base_steps
    policy = scratch(settings.image_size, settings.base_seed, settings.unet_channels)
    module = OfflinePairModule(
        policy,
        SFT(),
        optimizer=partial(torch.optim.AdamW, lr=settings.base_lr, weight_decay=1e-4),
        lr_scheduler=partial(WarmupCosine, total_steps=steps, warmup_steps=50),
        seed=settings.base_seed,
    )
    data = SceneDataModule(settings.image_size, batch_size=settings.base_batch_size)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=1.0,
        callbacks=[StepProgressBar()],
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    policy.unet.save_pretrained(out_dir / "unet")
    policy.noise_scheduler.save_pretrained(out_dir / "scheduler")
    policy.text_encoder.save_pretrained(out_dir / "text_encoder")
    policy.tokenizer.save_pretrained(out_dir / "tokenizer")
    seconds = round(time.perf_counter() - start, 1)
    policy.eval()
    return {"seconds": seconds, "steps": steps, "test_quality": base_quality(policy)}


QUALITY_SAMPLES = 256  # test-prompt samples behind the base model's recorded quality


@torch.no_grad()
def base_quality(policy: DiffusionPolicy, num_samples: int = QUALITY_SAMPLES) -> dict[str, float]:
    """How well a MiniPick model draws the held-out test prompts, as ``evaluate`` samples them.

    ``num_samples`` images (the 56 test prompts cycled, ``evaluate``'s per-sample seeds with eval
    seed 0, DDIM 10 steps, CFG 5) scored by the gold rater: the means of the gold reward, of its
    fidelity and taste groups (:meth:`GoldRater.score_groups`) and the median fidelity.
    """
    captions, seeds = sample_plan(prompts("test"), num_samples, seed=0)
    rater = GoldRater()
    images = torch.cat(
        [
            sample_seeded(policy, captions[i : i + SAMPLE_BATCH], seeds[i : i + SAMPLE_BATCH])
            for i in range(0, num_samples, SAMPLE_BATCH)
        ]
    )
    groups = rater.score_groups(rater.score_components(images, captions))
    return {
        "gold_mean": float(rater.score(images, captions).mean()),
        "fidelity_mean": float(groups["fidelity"].mean()),
        "fidelity_median": float(groups["fidelity"].median()),
        "taste_mean": float(groups["taste"].mean()),
        "samples": num_samples,
    }


def png_bytes(image: torch.Tensor) -> bytes:
    """``[3, H, W]`` in [-1, 1] → PNG bytes (lossless; the column is still called jpg_*)."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_pairs(
    policy: DiffusionPolicy, captions: list[str], seed: int, settings: AssetSettings, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two base-model samples per caption, batch by batch, each batch seeded by (seed, start)."""
    images: list[torch.Tensor] = []
    for start in tqdm(range(0, len(captions), SAMPLE_BATCH // 2), desc=desc, unit="batch"):
        chunk = captions[start : start + SAMPLE_BATCH // 2]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        out = sample_images(
            policy, chunk + chunk, gen, settings.sample_steps, settings.guidance_scale
        )  # [2b, 3, S, S]: first copies, then second copies
        images.append(torch.stack(out.chunk(2), dim=1))  # [b, 2, 3, S, S]
    both = torch.cat(images)
    return both[:, 0], both[:, 1]


def _split_captions(split: str, count: int, seed: int) -> list[str]:
    pool = prompts(split)
    rng = np.random.default_rng(seed)
    reps = -(-count // len(pool))
    return [pool[i] for i in np.concatenate([rng.permutation(len(pool)) for _ in range(reps)])][
        :count
    ]


def _write_split(folder: Path, split: str, captions: list[str], imgs: tuple, labels: tuple) -> None:
    n = len(captions)
    label_0 = labels[0].tolist()
    rows = {
        "are_different": [True] * n,
        "best_image_uid": [
            "" if lab == 0.5 else f"{split}-{i}-{0 if lab == 1.0 else 1}"
            for i, lab in enumerate(label_0)
        ],
        "caption": captions,
        "created_at": [np.datetime64("2026-01-01T00:00:00", "ns")] * n,
        "has_label": [True] * n,
        "image_0_uid": [f"{split}-{i}-0" for i in range(n)],
        "image_0_url": [""] * n,
        "image_1_uid": [f"{split}-{i}-1" for i in range(n)],
        "image_1_url": [""] * n,
        "jpg_0": [png_bytes(x) for x in imgs[0]],
        "jpg_1": [png_bytes(x) for x in imgs[1]],
        "label_0": label_0,
        "label_1": labels[1].tolist(),
        "model_0": ["minipick-base"] * n,
        "model_1": ["minipick-base"] * n,
        "ranking_id": list(range(n)),
        "user_id": [0] * n,
        "num_example_per_prompt": [1] * n,
        "__index_level_0__": list(range(n)),
    }
    (folder / split).mkdir(parents=True)
    table = pa.table(rows, schema=PICKAPIC_SCHEMA)
    pq.write_table(table, folder / split / f"{split}-00000-of-00001.parquet")


def winner_shares(
    label_0: torch.Tensor, groups_0: dict[str, torch.Tensor], groups_1: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Among the decided pairs, the share whose winner is the better image by each gold group.

    ``label_0`` is ``[B]`` (1: image 0 won, 0: image 1 won, 0.5: tie; ties are left out);
    ``groups_*`` are :meth:`GoldRater.score_groups` of each side. A pair whose two images score
    the same on a group counts half. Returns ``{"winner_has_higher_fidelity": ..., "winner_has_
    higher_taste": ...}``: 0.5 is chance, 1 means the labels always follow that group.
    """
    decided = label_0 != 0.5  # [B]
    out = {}
    for name in groups_0:
        diff = (groups_0[name] - groups_1[name])[decided]  # [D] image 0 minus image 1
        sign = torch.where(label_0[decided] == 1.0, diff, -diff).sign()  # [D] winner minus loser
        out[f"winner_has_higher_{name}"] = float((sign + 1).mean() / 2) if decided.any() else 0.5
    return out


def build_pairs(base_dir: Path, out_dir: Path, settings: AssetSettings, flow: bool = False) -> dict:
    """Sample two images per prompt from the base model, rate them and write Pick-a-Pic shards.

    ``flow``: the base is MiniPick-Flow's (sampled with the Euler ODE, same steps and CFG).

    The tie margin is set on the training pairs so that ``tie_rate`` of them are ties (Pick-a-Pic
    v2 has about 12%), and the same margin is used for every split.
    """
    start = time.perf_counter()
    if flow:
        from lightning_pref.minipick.flow_model import MiniPickFlowFolderPolicy

        policy: DiffusionPolicy = MiniPickFlowFolderPolicy(str(base_dir))
    else:
        policy = DiffusionPolicy(pretrained=str(base_dir))
    policy.build()
    policy.eval()
    rater = GoldRater()
    cap = settings.max_unique_pairs or 10**9
    # split name -> (prompt split, number of pairs); *_unique: one pair per prompt, as Pick-a-Pic
    plan = {
        "train": ("train", settings.num_train_pairs),
        "validation": ("validation", settings.num_val_pairs),
        "validation_unique": ("validation", min(cap, len(prompts("validation")))),
        "test_unique": ("test", min(cap, len(prompts("test")))),
    }
    margin = None
    info: dict[str, object] = {}
    for offset, (split, (prompt_split, count)) in enumerate(plan.items()):
        captions = _split_captions(prompt_split, count, settings.pair_seed + offset)
        imgs = _sample_pairs(policy, captions, settings.pair_seed + offset, settings, split)
        parts = [rater.score_components(x, captions) for x in imgs]
        s0, s1 = (rater.score(x, captions) for x in imgs)
        if margin is None:
            margin = tie_margin_for_rate(s0 - s1, settings.tie_rate)
        gen = torch.Generator().manual_seed(settings.pair_seed + 100 + offset)
        labels = label_pairs(s0, s1, gen, tie_margin=margin)
        _write_split(out_dir, split, captions, imgs, labels)
        info[split] = {
            "pairs": count,
            "ties": float((labels[0] == 0.5).float().mean()),
            "mean_gold": float(torch.cat([s0, s1]).mean()),
            **winner_shares(labels[0], *(rater.score_groups(p) for p in parts)),
        }
    info["tie_margin"] = margin
    info["seconds"] = round(time.perf_counter() - start, 1)
    return info
