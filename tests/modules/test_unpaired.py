"""UnpairedModule: pairs split into labelled images, or natively unpaired batches, for KTO."""

import pytest
import torch

from lightning_pref.modules import UnpairedModule
from lightning_pref.modules.unpaired import pairs_to_labeled
from lightning_pref.objectives import DiffusionKTO
from lightning_pref.types import ImageLabelBatch


@pytest.mark.parametrize(("fraction", "num_l"), [(0.8, 1), (0.5, 4), (1.0, 0), (0.2, 4)])
def test_pairs_to_labeled_positive_fraction(image_pair_batch, fraction, num_l):
    """B = 4 pairs: every winner (+1) and k = round(4·(1-f)/f) losers (-1), capped at 4:
    f = 0.8 -> 1 loser (80% positives, KTO's sampler); 0.5 -> all 4; 1.0 -> none."""
    out = pairs_to_labeled(image_pair_batch, fraction)
    assert out.labels.tolist() == [1.0] * 4 + [-1.0] * num_l
    assert torch.equal(out.pixels[:4], image_pair_batch.pixels_w)
    assert torch.equal(out.pixels[4:], image_pair_batch.pixels_l[:num_l])
    assert out.captions == image_pair_batch.captions + image_pair_batch.captions[:num_l]


def test_bad_fraction(tiny_policy, image_pair_batch):
    with pytest.raises(ValueError, match="positive_fraction"):
        pairs_to_labeled(image_pair_batch, 0.0)
    with pytest.raises(ValueError, match="positive_fraction"):
        UnpairedModule(tiny_policy, DiffusionKTO(), positive_fraction=1.5)


def test_native_unpaired_batch_trains(tiny_policy):
    """An ImageLabelBatch goes straight to the objective; the loss is KTO's, in (0, λ]."""
    g = torch.Generator().manual_seed(0)
    batch = ImageLabelBatch(
        torch.rand(3, 3, 16, 16, generator=g) * 2 - 1,
        ["a red circle", "a blue square", ""],
        torch.tensor([1.0, -1.0, 1.0]),
    )
    module = UnpairedModule(tiny_policy, DiffusionKTO())
    module.configure_model()
    out = module.shared_step(batch, "train", 0)
    assert 0.0 < out.loss.item() <= 1.0
    assert out.metrics["desirable_frac"].item() == pytest.approx(2 / 3)
    assert module.batch_size(batch) == 3
    out.loss.backward()
    grads = [p.grad for p in module.policy.unet.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_same_policy_and_reference_gives_half(tiny_policy, image_pair_batch):
    """Before any update the policy equals the reference: g = 0, kl = 0, h = σ(0) = 0.5, so the
    loss is mean(λ·(1 - 0.5)) = 0.5 exactly."""
    module = UnpairedModule(tiny_policy, DiffusionKTO(), reference="copy")
    module.configure_model()
    with torch.no_grad():
        out = module.shared_step(image_pair_batch, "val", 0)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6)


def test_kto_reference_point_spans_ranks_through_the_module(tiny_policy, monkeypatch):
    """The module sums KTO's [sum, count] over ranks with ``all_gather`` (faked: this rank's
    [9, 3] and another's [10, 1]), so the reference point is (9 + 10) / (3 + 1) = 4.75."""
    kto = DiffusionKTO()
    module = UnpairedModule(tiny_policy, kto)
    assert kto.global_mean(torch.tensor([1.0, 2.0, 6.0])).item() == 3.0  # no trainer: one rank

    class TwoRanks:
        world_size = 2

    monkeypatch.setattr(module, "_trainer", TwoRanks())
    monkeypatch.setattr(module, "all_gather", lambda t: torch.stack([t, torch.tensor([10.0, 1.0])]))
    assert kto.global_mean(torch.tensor([1.0, 2.0, 6.0])).item() == 4.75
