"""Two AdamW steps of DSPO (both branches), KTO and Self-NPO on the tiny policy: losses and hashes.

Run from a checkout: ``python check_modules.py`` with that checkout's package importable. It works
on both sides of the redesign (``DSPO(form="sdxl")`` before it, ``DSPOSDXL`` after).
"""

import hashlib

import torch

from lightning_pref import objectives
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule, SelfNPOModule, UnpairedModule
from lightning_pref.types import ImagePairBatch


def batch() -> ImagePairBatch:
    """Four fixed random pairs (as the tests' ``image_pair_batch``)."""
    g = torch.Generator().manual_seed(0)
    pixels = [torch.rand(4, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2)]
    captions = ["a red circle", "a blue square", "", "a green triangle on the left"]
    return ImagePairBatch(*pixels, captions, torch.ones(4))


def dspo_sdxl() -> torch.nn.Module:
    """The SDXL branch under either API."""
    if hasattr(objectives, "DSPOSDXL"):
        return objectives.DSPOSDXL(beta=1000.0)
    return objectives.DSPO(beta=1000.0, form="sdxl")


CASES = {
    "dspo_sd15": (OfflinePairModule, lambda: objectives.DSPO(beta=0.05)),
    "dspo_sdxl": (OfflinePairModule, dspo_sdxl),
    "kto": (UnpairedModule, objectives.DiffusionKTO),
    "self_npo": (SelfNPOModule, objectives.SelfNPOLoss),
}


def main() -> None:
    """Print each case's two losses, a hash of its parameters after them and its metric names."""
    torch.set_num_threads(1)
    for name, (module_cls, make) in CASES.items():
        policy = TinyDiffusionPolicy(sample_size=8, seed=0)
        policy.build()
        module = module_cls(policy, make(), seed=0)
        module.configure_model()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for step in range(2):
            out = module.shared_step(batch(), "train", step)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(f"{out.loss.item():.10g}")
        digest = hashlib.sha256()
        for _, param in sorted(module.named_parameters()):
            digest.update(param.detach().float().numpy().tobytes())
        print(name, losses, digest.hexdigest()[:16], sorted(out.metrics))


if __name__ == "__main__":
    main()
