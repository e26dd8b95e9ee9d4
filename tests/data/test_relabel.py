import pytest
import torch

from lightning_pref.data.relabel import relabel_pairs
from lightning_pref.scoring import Scorer
from lightning_pref.types import ImagePairBatch


class Brightness(Scorer):
    """Prefers brighter images: score = mean pixel value. Records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, list[str], bool, bool]] = []

    def forward(self, images, captions, timesteps=None):
        call = (images.shape[0], list(captions), torch.is_grad_enabled(), self.training)
        self.calls.append(call)
        return images.mean(dim=(1, 2, 3))


def make_batch(levels_w, levels_l, pref_prob=None) -> ImagePairBatch:
    """Constant images at the given brightness levels (in [-1, 1])."""
    w = torch.tensor(levels_w).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    l_ = torch.tensor(levels_l).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    w[:, 0, 0, 0] += torch.arange(len(levels_w)) * 1e-3  # tag each pair to follow it
    n = len(levels_w)
    probs = torch.ones(n) if pref_prob is None else torch.tensor(pref_prob)
    return ImagePairBatch(w, l_, [f"c{i}" for i in range(n)], probs, num_skipped=2)


def test_swaps_exactly_where_the_loser_is_brighter():
    """Levels w = [.5, -.2, .1, .0, .3], l = [.1, .4, .1, .6, -.9]: the loser is brighter in pairs
    1 and 3 only (pair 2 is a tie up to the 2e-3/48 tag, which favours w)."""
    batch = make_batch([0.5, -0.2, 0.1, 0.0, 0.3], [0.1, 0.4, 0.1, 0.6, -0.9])
    w0, l0 = batch.pixels_w.clone(), batch.pixels_l.clone()
    scorer = Brightness().train()  # e.g. after the LightningModule's .train()
    out = relabel_pairs(batch, scorer)
    assert out.swapped.tolist() == [False, True, False, True, False]
    assert out.num_swapped == 2
    swap = out.swapped.view(-1, 1, 1, 1)
    assert torch.equal(out.batch.pixels_w, torch.where(swap, l0, w0))
    assert torch.equal(out.batch.pixels_l, torch.where(swap, w0, l0))
    assert (out.batch.pixels_w.mean((1, 2, 3)) >= out.batch.pixels_l.mean((1, 2, 3))).all()
    assert (out.score_w >= out.score_l).all()
    torch.testing.assert_close(out.score_w, out.batch.pixels_w.mean((1, 2, 3)))
    assert torch.equal(batch.pixels_w, w0) and torch.equal(batch.pixels_l, l0)  # input untouched
    assert out.batch.captions == batch.captions and out.batch.num_skipped == 2
    assert scorer.calls == [(10, [f"c{i}" for i in range(5)] * 2, False, False)]  # no grad, eval
    assert scorer.training  # restored


def test_exact_ties_keep_the_incoming_order():
    batch = make_batch([0.2, 0.2], [0.2, 0.2])
    batch.pixels_w = batch.pixels_l.clone()  # identical images: equal scores
    out = relabel_pairs(batch, Brightness())
    assert out.num_swapped == 0
    assert torch.equal(out.batch.pixels_w, batch.pixels_w)


def test_pref_prob_hard_or_kept():
    """hard_labels: all 1. Otherwise p for kept pairs, 1 - p for swapped: [0.9, 1 - 0.7]."""
    batch = make_batch([0.5, -0.5], [0.0, 0.0], pref_prob=[0.9, 0.7])
    assert relabel_pairs(batch, Brightness()).batch.pref_prob.tolist() == [1.0, 1.0]
    soft = relabel_pairs(batch, Brightness(), hard_labels=False).batch.pref_prob
    torch.testing.assert_close(soft, torch.tensor([0.9, 0.3]))


def test_captions_override_and_errors():
    batch = make_batch([0.0, 0.0], [0.1, -0.1])
    batch.captions = ["", "c1"]  # empty-prompt dropout fired on pair 0
    scorer = Brightness()
    relabel_pairs(batch, scorer, captions=["full 0", "c1"])
    assert scorer.calls[0][1] == ["full 0", "c1", "full 0", "c1"]
    with pytest.raises(ValueError, match="2 pairs but 1 captions"):
        relabel_pairs(batch, scorer, captions=["x"])


def test_empty_batch():
    empty = torch.zeros(0, 3, 4, 4)
    out = relabel_pairs(ImagePairBatch(empty, empty, [], torch.zeros(0), 3), Brightness())
    assert out.num_swapped == 0 and out.batch.pixels_w.shape == (0, 3, 4, 4)
