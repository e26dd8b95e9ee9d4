"""Which side do MiniPick's learned rewards take when a pair's fidelity and taste disagree?

Run from the repository root: ``python results/minipick_v2_leaderboard/diagnostics/reward_sides.py``
(prints JSON; ``reward_sides.json`` next to this file is its output on the v2 assets). For every
pair of a split it scores both images with the gold rater's fidelity and taste groups, with
``MiniPickScore`` (the proxy) and with ``MiniPickSPM`` at t = 0, and reports, over the pairs whose
fidelity and taste gaps both exceed ``margin`` and point to different images ("conflict pairs"),
how often each scorer, the gold rater and the labels side with the higher-fidelity image; and the
mean fidelity and taste of the decided pairs' winners and losers.
"""

from __future__ import annotations

import json
import sys

import torch

from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.proxy import MiniPickScore
from lightning_pref.minipick.proxy_train import load_pairs
from lightning_pref.minipick.rater import GoldRater
from lightning_pref.minipick.spm import StepAwareMiniPickScore


def _agree(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of ``mask``-ed pairs where ``a`` and ``b`` pick the same image."""
    return float(((a > 0) == (b > 0))[mask].float().mean())


@torch.no_grad()
def reward_sides(
    splits: tuple[str, ...] = ("train", "validation"), margin: float = 0.02, data_dir=None
) -> dict:
    """The measurements above, per split and scorer.

    Returns:
        ``{split: {...}}``: label accuracy, agreement with the fidelity and taste orders, the
        share of conflict pairs decided for fidelity (by each scorer, the gold rater, the labels),
        and the winners' and losers' mean fidelity and taste.
    """
    assets, rater = MiniPickAssets(data_dir), GoldRater()
    scorers = {
        "proxy": MiniPickScore.from_pretrained(assets.proxy_dir(build=True)),
        "spm_t0": StepAwareMiniPickScore.from_pretrained(assets.spm_dir(build=True)),
    }
    out: dict = {}
    for split in splits:
        p = load_pairs(assets.pairs_dir(build=True), split, 16)

        def groups(x: torch.Tensor, p=p) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            g = rater.score_groups(rater.score_components(x, p.captions))
            return g["fidelity"], g["taste"], rater.score(x, p.captions)

        (f0, t0, g0), (f1, t1, g1) = groups(p.images_0), groups(p.images_1)
        df, dt, dg = f0 - f1, t0 - t1, g0 - g1  # [B] each
        decided, label = p.label_0 != 0.5, p.label_0 - 0.5  # label > 0: image 0 won
        conflict = (df * dt < 0) & (df.abs() > margin) & (dt.abs() > margin)
        out[split] = {"pairs": len(p), "conflict_pairs": int(conflict.sum())}
        w0 = p.label_0[decided] > 0.5  # among decided pairs: image 0 won
        for group, (a0, a1) in (("fidelity", (f0, f1)), ("taste", (t0, t1))):
            a0, a1 = a0[decided], a1[decided]
            out[split][f"winners_{group}_mean"] = float(torch.where(w0, a0, a1).mean())
            out[split][f"losers_{group}_mean"] = float(torch.where(w0, a1, a0).mean())
        out[split]["gold_sides_with_fidelity"] = _agree(dg, df, conflict)
        out[split]["labels_side_with_fidelity"] = _agree(label, df, conflict & decided)
        for name, model in scorers.items():
            ids = model.tokenize(p.captions)
            ds = model.score_ids(p.images_0, ids) - model.score_ids(p.images_1, ids)  # [B]
            out[split][name] = {
                "label_accuracy": _agree(ds, label, decided),
                "agrees_with_fidelity_order": _agree(ds, df, df.abs() > margin),
                "agrees_with_taste_order": _agree(ds, dt, dt.abs() > margin),
                "sides_with_fidelity": _agree(ds, df, conflict),
            }
    return out


if __name__ == "__main__":
    print(json.dumps(reward_sides(tuple(sys.argv[1:]) or ("train", "validation")), indent=1))
