"""Per timestep range, the cosine between a method's first-step gradient and DPO's.

Run from the repository root: ``python
results/minipick_v2_leaderboard/diagnostics/gradient_cosine.py inpo smpo`` (prints JSON;
``gradient_cosine.json`` next to this file is its output on the v2 assets). Each shipped
``experiments/<method>_minipick.yaml`` is built as ``fit`` builds it (policy = reference = the
base), given its data module's first training batch (32 pairs; SmPO's carries its smoothed
labels), its timesteps restricted to one range at a time, and the gradient of its loss (mean
over 4 draws of t and noise) is compared with that of ``dpo_minipick.yaml`` (ordinary forward
noising) on the same pairs. ``dpo_other_draws`` is DPO against itself with 4 other draws: the
agreement to expect from noise alone.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from lightning_pref.cli import PreferenceCLI

RANGES = ((2, 202), (202, 402), (402, 602), (602, 802), (802, 1000))


def build(method: str):
    """The module (models built) and the first training batch of a shipped MiniPick config."""
    cli = PreferenceCLI(
        args=["--config", f"experiments/{method}_minipick.yaml", "--trainer.logger", "false"],
        run=False,
    )
    cli.model.configure_model()
    cli.datamodule.setup("fit")
    return cli.model, next(iter(cli.datamodule.train_dataloader()))


def gradient(module, batch, low: int, high: int, draws: range) -> torch.Tensor:
    """The flattened gradient of the mean loss over ``draws`` with t in ``[low, high)``."""
    module.timestep_range = (low, high)
    params = [p for p in module.policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    for i in draws:
        (module.shared_step(batch, "train", i).loss / len(draws)).backward()
    return torch.cat([p.grad.flatten() for p in params])


def gradient_cosines(methods: list[str]) -> dict:
    """``{method: {"low-high": cosine}}`` against DPO, plus DPO's own draw-to-draw agreement."""
    dpo, dpo_batch = build("dpo")
    ref = {r: gradient(dpo, dpo_batch, *r, range(4)) for r in RANGES}
    out: dict = {}
    for method in methods:
        module, batch = build(method)
        if list(batch.captions) != list(dpo_batch.captions):
            raise RuntimeError(f"{method}'s first batch holds other pairs than DPO's")
        out[method] = {
            f"{lo}-{hi}": float(F.cosine_similarity(gradient(module, batch, lo, hi, range(4)),
                                                    ref[(lo, hi)], dim=0))
            for lo, hi in RANGES
        }  # fmt: skip
    out["dpo_other_draws"] = {
        f"{lo}-{hi}": float(F.cosine_similarity(gradient(dpo, dpo_batch, lo, hi, range(4, 8)),
                                                ref[(lo, hi)], dim=0))
        for lo, hi in RANGES
    }  # fmt: skip
    return out


if __name__ == "__main__":
    print(json.dumps(gradient_cosines(sys.argv[1:] or ["inpo", "smpo"]), indent=1))
