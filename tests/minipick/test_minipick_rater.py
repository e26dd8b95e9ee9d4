"""MiniPick gold rater and Bradley-Terry pair labels."""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.minipick import (
    COLORS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TIE_MARGIN,
    POSITIONS,
    SHAPES,
    SIZES,
    GoldRater,
    RaterWeights,
    Scene,
    calibration_diffs,
    caption,
    label_pairs,
    render,
    sample_scenes,
    temperature_for_agreement,
    tie_margin_for_rate,
)

RATER = GoldRater()
VALUES = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("attribute", ["shape", "color", "size", "position"])
def test_rater_prefers_the_correct_rendering(attribute, size):
    """For each scene, every wrong value of one attribute scores lower, overall and on its term."""
    scenes = sample_scenes(16, seed=21)
    correct, wrong, captions = [], [], []
    for scene in scenes:
        for value in VALUES[attribute]:
            if value != getattr(scene, attribute):
                correct.append(scene)
                wrong.append(dataclasses.replace(scene, **{attribute: value}))
                captions.append(caption(scene))
    good = RATER.score_components(render(correct, size=size, seed=1), captions)
    bad = RATER.score_components(render(wrong, size=size, seed=1), captions)
    good_score = RATER.score(render(correct, size=size, seed=1), captions)
    bad_score = RATER.score(render(wrong, size=size, seed=1), captions)
    assert (good_score - bad_score).min() > 0.02
    assert (good[attribute] - bad[attribute]).min() > 0.1
    good_groups, bad_groups = RATER.score_groups(good), RATER.score_groups(bad)
    assert (good_groups["fidelity"] - bad_groups["fidelity"]).min() > 0.02


def test_score_is_fidelity_and_taste_weighted():
    """fidelity = (.20 color + .20 position + .15 size + .20 shape + .05 border) / .80 and
    taste = (.15 tone + .05 clean) / .20, so score = .80 fidelity + .20 taste; on a blank image
    nothing is found (fidelity 0) and taste is the background's alone: tone (1 + 0.8) / 2 = 0.9,
    clean exp(0) = 1, taste (.15 * .9 + .05) / .2 = 0.925.
    """
    scenes = sample_scenes(40, seed=4)
    captions = [caption(s) for s in scenes]
    images = render(scenes, seed=4)
    parts = RATER.score_components(images, captions)
    groups = RATER.score_groups(parts)
    fidelity = (
        0.20 * parts["color"]
        + 0.20 * parts["position"]
        + 0.15 * parts["size"]
        + 0.20 * parts["shape"]
        + 0.05 * parts["border"]
    ) / 0.80
    assert_close(groups["fidelity"], fidelity)
    assert_close(groups["taste"], (0.15 * parts["tone"] + 0.05 * parts["clean"]) / 0.20)
    assert_close(RATER.score(images, captions), 0.8 * groups["fidelity"] + 0.2 * groups["taste"])
    blank = RATER.score_groups(
        RATER.score_components(torch.full((2, 3, 16, 16), -0.8), captions[:2])
    )
    assert_close(blank["fidelity"], torch.zeros(2))
    assert_close(blank["taste"], torch.full((2,), 0.925))


def test_correct_renders_score_high_on_fidelity():
    scenes = sample_scenes(500, seed=2)
    parts = RATER.score_components(render(scenes, seed=2), [caption(s) for s in scenes])
    for name in ("color", "position", "size", "shape", "border"):
        assert parts[name].mean() > 0.95, name
        assert parts[name].min() > 0.5, name


@pytest.mark.parametrize(
    ("liked", "disliked", "term"),
    [
        ({"background": -0.8, "texture": 0.0}, {"background": 0.2, "texture": 0.0}, "tone"),
        ({"background": -0.5, "texture": 0.0}, {"background": -0.5, "texture": 0.1}, "clean"),
    ],
)
def test_aesthetic_prefers_dark_clean_background_at_equal_fidelity(liked, disliked, term):
    base = sample_scenes(40, seed=8)
    captions = [caption(s) for s in base]
    good = RATER.score_components(render([dataclasses.replace(s, **liked) for s in base]), captions)
    bad = RATER.score_components(
        render([dataclasses.replace(s, **disliked) for s in base]), captions
    )
    for name in ("color", "position", "size", "shape", "border"):  # texture blurs small edges a bit
        assert_close(good[name], bad[name], rtol=0, atol=0.1)
    assert (good[term] - bad[term]).min() > 0.1
    weights = RaterWeights()
    total = lambda parts: sum(getattr(weights, k) * v for k, v in parts.items())  # noqa: E731
    assert (total(good) - total(bad)).min() > 0.015  # taste weighs 0.20 (clean 0.05)
    taste = RATER.score_groups(good)["taste"] - RATER.score_groups(bad)["taste"]
    assert taste.min() > 0.1


def test_score_is_the_weighted_sum_of_components_in_unit_range():
    scenes = sample_scenes(64, seed=4)
    images, captions = render(scenes, seed=4), [caption(s) for s in scenes]
    parts = RATER.score_components(images, captions)
    weights = RaterWeights()
    assert math.isclose(sum(dataclasses.astuple(weights)), 1.0)
    assert set(parts) == {f.name for f in dataclasses.fields(RaterWeights)}
    expected = sum(getattr(weights, k) * v for k, v in parts.items())
    assert_close(RATER.score(images, captions), expected, rtol=0, atol=1e-6)
    for name, value in parts.items():
        assert value.shape == (64,)
        assert value.min() >= 0 and value.max() <= 1, name


def test_score_is_deterministic_and_independent_of_the_batch():
    scenes = sample_scenes(48, seed=6)
    images, captions = render(scenes, seed=6), [caption(s) for s in scenes]
    full = RATER.score(images, captions)
    assert torch.equal(full, RATER.score(images.clone(), list(captions)))
    halves = torch.cat(
        [RATER.score(images[:20], captions[:20]), RATER.score(images[20:], captions[20:])]
    )
    assert_close(full, halves, rtol=0, atol=1e-6)


def test_blank_and_noise_images_score_below_renders():
    scenes = sample_scenes(32, seed=7)
    captions = [caption(s) for s in scenes]
    rendered = RATER.score(render(scenes, seed=7), captions)
    blank = RATER.score_components(torch.full((32, 3, 16, 16), -0.8), captions)
    assert blank["color"].max() < 0.01
    noise = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (rendered - RATER.score(torch.full((32, 3, 16, 16), -0.8), captions)).min() > 0.3
    assert (rendered - RATER.score(noise, captions)).min() > 0.3


def test_off_image_object_loses_the_border_term():
    inside = Scene("square", "green", "large", "left", background=-0.6)
    cut = dataclasses.replace(inside, offset=(-0.2, 0.0))
    parts = RATER.score_components(render([inside, cut]), [caption(inside)] * 2)
    assert parts["border"][0] > 0.95
    assert parts["border"][1] < 0.5


def test_rater_rejects_mismatched_inputs():
    images = render(sample_scenes(3, seed=0))
    with pytest.raises(ValueError, match="captions"):
        RATER.score(images, ["a large red circle on the left"] * 2)
    with pytest.raises(ValueError, match="not a MiniPick caption"):
        RATER.score(images, ["a photo of a cat"] * 3)


def test_tie_margin_for_rate_is_the_quantile_of_absolute_differences():
    """|d| sorted = [0, .1, .2, .3, .4]; the 0.5 quantile is .2 and the 0.25 quantile is .1."""
    diffs = torch.tensor([-0.4, 0.1, 0.2, -0.3, 0.0])
    assert math.isclose(tie_margin_for_rate(diffs, 0.5), 0.2, abs_tol=1e-7)
    assert math.isclose(tie_margin_for_rate(diffs, 0.25), 0.1, abs_tol=1e-7)
    assert tie_margin_for_rate(diffs, 0.0) == 0.0
    with pytest.raises(ValueError, match="rate"):
        tie_margin_for_rate(diffs, 1.0)


def test_temperature_for_agreement():
    """Median |d| = 0.1; sigmoid(0.1 / T) = 0.8 gives T = 0.1 / ln 4."""
    diffs = torch.tensor([0.05, -0.1, 0.3])
    assert math.isclose(temperature_for_agreement(diffs, 0.8), 0.1 / math.log(4.0), rel_tol=1e-6)


def test_label_pairs_format_and_bradley_terry_rate():
    """With s0 - s1 = T ln 3 everywhere, P(0 wins) = sigmoid(ln 3) = 0.75."""
    n, temperature = 20_000, 0.1
    scores_0 = torch.full((n,), 0.5 + temperature * math.log(3.0))
    gen = torch.Generator().manual_seed(0)
    label_0, label_1 = label_pairs(scores_0, torch.full((n,), 0.5), gen, temperature, 0.0)
    assert_close(label_0 + label_1, torch.ones(n))
    assert set(label_0.unique().tolist()) <= {0.0, 1.0}
    assert abs(label_0.mean().item() - 0.75) < 0.015
    again = label_pairs(scores_0, torch.full((n,), 0.5), torch.Generator().manual_seed(0), 0.1, 0.0)
    assert torch.equal(label_0, again[0])


def test_label_pairs_ties_below_margin_and_near_deterministic_order():
    scores_0 = torch.tensor([0.50, 0.90, 0.10, 0.52, 0.30])
    scores_1 = torch.tensor([0.51, 0.10, 0.90, 0.50, 0.30])
    gen = torch.Generator().manual_seed(0)
    label_0, label_1 = label_pairs(scores_0, scores_1, gen, temperature=1e-4, tie_margin=0.023)
    assert label_0.tolist() == [0.5, 1.0, 0.0, 0.5, 0.5]
    assert label_1.tolist() == [0.5, 0.0, 1.0, 0.5, 0.5]


def test_calibrated_margin_gives_the_requested_tie_rate_and_labels_follow_scores():
    calibration, fresh = calibration_diffs(1024, seed=1), calibration_diffs(1024, seed=2)
    margin = tie_margin_for_rate(calibration, 0.12)
    assert abs((fresh.abs() < margin).float().mean().item() - 0.12) < 0.03
    assert abs((fresh.abs() < DEFAULT_TIE_MARGIN).float().mean().item() - 0.12) < 0.03
    assert abs(temperature_for_agreement(fresh) / DEFAULT_TEMPERATURE - 1.0) < 0.2
    gen = torch.Generator().manual_seed(3)
    label_0, _ = label_pairs(fresh, torch.zeros_like(fresh), gen, tie_margin=margin)
    ties = label_0 == 0.5
    assert abs(ties.float().mean().item() - 0.12) < 0.03
    agree = (label_0[~ties] == 1.0) == (fresh[~ties] > 0)
    assert agree.float().mean() > 0.75


def test_winner_shares_count_decided_pairs_by_group():
    """Pairs: 0 won (fidelity 0.9 vs 0.1: winner higher), 1 won (0.8 vs 0.2: winner lower), tie
    (left out), 0 won (0.5 vs 0.5: half). Fidelity share (1 + 0 + 0.5) / 3 = 0.5; taste: the
    winner is higher in all three, 1.0.
    """
    from lightning_pref.minipick.build import winner_shares

    label_0 = torch.tensor([1.0, 0.0, 0.5, 1.0])
    g0 = {"fidelity": torch.tensor([0.9, 0.8, 0.0, 0.5]), "taste": torch.tensor([0.6, 0.1, 0, 0.7])}
    g1 = {"fidelity": torch.tensor([0.1, 0.2, 1.0, 0.5]), "taste": torch.tensor([0.2, 0.4, 1, 0.1])}
    shares = winner_shares(label_0, g0, g1)
    assert shares == pytest.approx(
        {"winner_has_higher_fidelity": 0.5, "winner_has_higher_taste": 1.0}
    )
