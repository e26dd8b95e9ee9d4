"""AI-feedback relabelling inside OfflinePairModule (Diffusion-DPO's --choice_model)."""

from functools import partial

import torch

from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.scoring.base import Scorer
from lightning_pref.types import ImagePairBatch


class Brightness(Scorer):
    """Mean pixel value; records the captions it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def forward(self, images, captions, timesteps=None):
        self.seen = list(captions)
        return images.mean(dim=(1, 2, 3))


def make(relabel=None) -> OfflinePairModule:
    module = OfflinePairModule(
        TinyDiffusionPolicy(sample_size=8, seed=0), DiffusionDPO(beta=5000.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-3), seed=0, relabel=relabel,
    )  # fmt: skip
    module.configure_model()
    return module


def test_relabelled_training_step_equals_training_on_the_reordered_batch():
    """Pairs 1 and 3 have a brighter loser: relabelling swaps exactly those, scores the captions
    from before dropout, and the loss is the plain module's loss on the hand-swapped batch."""
    dark, bright = -torch.ones(4, 3, 16, 16) * 0.5, torch.ones(4, 3, 16, 16) * 0.5
    first = torch.tensor([True, False, True, False]).view(-1, 1, 1, 1)
    win, lose = torch.where(first, bright, dark), torch.where(first, dark, bright)
    win = win + 0.01 * torch.randn(4, 3, 16, 16)
    lose = lose + 0.01 * torch.randn(4, 3, 16, 16)
    raw = ["a", "b", "c", "d"]
    batch = ImagePairBatch(win, lose, ["a", "", "c", "d"], torch.ones(4), raw_captions=raw)
    scorer = Brightness()
    module = make(scorer)
    relabelled = module.relabelled(batch)
    assert module.pairs_relabelled == 2 and scorer.seen == ["a", "b", "c", "d"] * 2
    swapped = torch.tensor([False, True, False, True]).view(-1, 1, 1, 1)
    assert torch.equal(relabelled.pixels_w, torch.where(swapped, lose, win))
    by_hand = ImagePairBatch(torch.where(swapped, lose, win), torch.where(swapped, win, lose),
                             batch.captions, torch.ones(4))  # fmt: skip
    plain = make()
    assert torch.equal(module.shared_step(relabelled, "train", 0).loss,
                       plain.shared_step(by_hand, "train", 0).loss)  # fmt: skip


def test_the_scorer_is_frozen_and_not_saved():
    module = make(Brightness())
    assert all(k.startswith("policy.unet.") for k in module.state_dict())
    assert "relabel" not in module.hparams
