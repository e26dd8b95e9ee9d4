"""`evaluate` with negative-model guidance (Diffusion-NPO, METHODS §11.1) on tiny trained runs."""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.commands.evaluate import main as evaluate_run
from lightning_pref.errors import ConfigError
from lightning_pref.evaluation.args import parse_evaluate_args
from lightning_pref.evaluation.setup import prepare_evaluation
from lightning_pref.models.negative import merged_unet
from lightning_pref.models.sampling import sample_plan, sample_seeded
from lightning_pref.runs import load_module

ROOT = Path(__file__).parents[1]
SAMPLING = {"num_steps": 3, "guidance_scale": 5.0, "eta": 0.0}
FAST = ["--num_samples", "4", "--num_steps", "3", "--batch_size", "4", "--diversity_samples", "0"]
FAST += [
    "--implicit_draws",
    "0",
    "--scorers",
    '{"g": {"class_path": "lightning_pref.evaluation.scorers.GoldScorer"}}',
]
FAST += ["--gold", "g"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; spinning OpenMP threads only slow a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fit_tiny):
    """A trained NPO run (LoRA), the same run's checkpoint set back to the base, and a DPO run."""
    save_dir = tmp_path_factory.mktemp("runs")
    lr = "--model.init_args.optimizer.init_args.lr=1.0e-3"  # the weights visibly move
    npo = fit_tiny("tiny_npo.yaml", save_dir, lr) / "checkpoints" / "last.ckpt"
    dpo = fit_tiny("tiny_dpo.yaml", save_dir, lr) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(npo, weights_only=True)
    base = load_module(npo.parent.parent / "config.yaml").state_dict()
    moved = [
        k for k in checkpoint["state_dict"] if not torch.equal(checkpoint["state_dict"][k], base[k])
    ]
    assert moved, "2 NPO steps at lr 1e-3 moved the LoRA weights"
    checkpoint["state_dict"] = {k: base[k].clone() for k in checkpoint["state_dict"]}
    zero = npo.parent / "zero.ckpt"  # a negative model whose weights equal the base
    torch.save(checkpoint, zero)
    return {"npo": npo, "zero": zero, "dpo": dpo}


def _evaluate(*argv: str, out: Path):
    return evaluate_run([*argv, *FAST, "--out", str(out)])


def test_negative_equal_to_the_base_gives_plain_evaluation(runs, tmp_path):
    """θ_neg = θ_pos + (θ_zero - θ_base) = θ_pos: negative guidance is ordinary CFG (to ~1e-6)."""
    plain = _evaluate("--run", str(runs["dpo"]), out=tmp_path / "plain")
    guided = _evaluate(
        "--run", str(runs["dpo"]), "--negative", str(runs["zero"]), out=tmp_path / "g"
    )
    assert (guided.wins, guided.ties, guided.losses) == (plain.wins, plain.ties, plain.losses)
    a, b = plain.scores["g"], guided.scores["g"]
    assert (a.base_mean, a.base_median) == (b.base_mean, b.base_median)  # the baseline is untouched
    assert_close(b.tuned_mean, a.tuned_mean, atol=1e-5, rtol=0)
    assert_close(b.tuned_median, a.tuned_median, atol=1e-5, rtol=0)
    assert (plain.negative, guided.negative) == (None, str(runs["zero"]))
    assert guided.merge_weight == 0.0 and guided.baseline_negative is None
    assert (tmp_path / "g" / "report.json").is_file()
    # and the samples themselves, through the setup evaluate uses
    args = parse_evaluate_args(["--run", str(runs["dpo"]), "--negative", str(runs["zero"]), *FAST])
    setup = prepare_evaluation(args, negative_guidance=True)
    captions, seeds = sample_plan(setup.prompts, 3, 0)
    with_neg = sample_seeded(
        setup.tuned.policy, captions, seeds, uncond_denoiser=setup.tuned_negative, **SAMPLING
    )
    without = sample_seeded(setup.tuned.policy, captions, seeds, **SAMPLING)
    assert_close(with_neg, without, atol=1e-5, rtol=0)


def test_npo_run_means_base_plus_npo_and_changes_the_samples(runs):
    """`--run NPO`: the tuned side is the NPO run's base, guided by θ_neg = θ_base + δ = θ_npo."""
    args = parse_evaluate_args(["--run", str(runs["npo"]), *FAST])
    setup = prepare_evaluation(args, negative_guidance=True)
    assert setup.base_negative is None and setup.tuned_negative is not None
    base_unet = setup.base.policy.unet.state_dict()
    assert all(
        torch.equal(v, base_unet[k]) for k, v in setup.tuned.policy.unet.state_dict().items()
    )
    npo = load_module(runs["npo"].parent.parent / "config.yaml", runs["npo"])
    expected = merged_unet(npo.policy.unet).state_dict()
    got = setup.tuned_negative.unet.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)
    captions, seeds = sample_plan(setup.prompts, 3, 0)
    guided = sample_seeded(
        setup.tuned.policy, captions, seeds, uncond_denoiser=setup.tuned_negative, **SAMPLING
    )
    plain = sample_seeded(setup.base.policy, captions, seeds, **SAMPLING)
    assert (guided - plain).abs().max() > 1e-4  # the trained negative model moves the images


def test_npo_on_both_sides_ties_and_reports_what_was_compared(runs, tmp_path):
    """`--run NPO --baseline NPO`: base+NPO against itself, identical computation: all ties."""
    report = _evaluate("--run", str(runs["npo"]), "--baseline", str(runs["npo"]), out=tmp_path)
    assert (report.win_rate, report.ties) == (0.5, 4)
    assert report.tuned == "base (no checkpoint)" and report.negative == str(runs["npo"])
    assert report.baseline_negative == str(runs["npo"])
    assert "negative guidance (merge_weight 0.0)" in report.to_markdown_table()


def test_merge_weight_one_makes_the_negative_the_npo_model(runs):
    """m = 1: θ_neg = θ_dpo + δ - (θ_dpo - θ_base) = θ_npo (DPO and NPO share the tiny base)."""
    argv = ["--run", str(runs["dpo"]), "--negative", str(runs["npo"]), "--merge_weight", "1.0"]
    setup = prepare_evaluation(parse_evaluate_args([*argv, *FAST]), negative_guidance=True)
    npo = load_module(runs["npo"].parent.parent / "config.yaml", runs["npo"])
    expected = merged_unet(npo.policy.unet).state_dict()
    got = setup.tuned_negative.unet.state_dict()
    for key in expected:
        assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    dpo_unet = setup.tuned.policy.unet.state_dict()
    assert any(not torch.allclose(got[k], dpo_unet[k]) for k in expected)


def test_misuse_is_a_config_error(runs):
    with pytest.raises(ConfigError, match="already stands for base"):
        prepare_evaluation(
            parse_evaluate_args(
                ["--run", str(runs["npo"]), "--negative", str(runs["zero"]), *FAST]
            ),
            negative_guidance=True,
        )
    # callers that sample without negatives (the leaderboard's cache) must not get a silent base
    with pytest.raises(ConfigError, match="without negative guidance"):
        prepare_evaluation(parse_evaluate_args(["--run", str(runs["npo"]), *FAST]))


def test_dpo_plus_npo_against_the_same_dpo_has_no_implicit_accuracy(runs, tmp_path):
    """The implicit reward is the tuned model's against the baseline's; with the same checkpoint on
    both sides it is 0 for every pair, so it is not reported (rather than as accuracy 0)."""
    dpo, npo = str(runs["dpo"]), str(runs["npo"])
    draws = ["--implicit_draws", "1"]
    same = ["--run", dpo, "--negative", npo, "--baseline", dpo, *FAST, *draws]
    assert evaluate_run([*same, "--out", str(tmp_path / "same")]).implicit_acc is None
    plain = ["--run", dpo, "--negative", npo, *FAST, *draws, "--out", str(tmp_path / "base")]
    assert evaluate_run(plain).implicit_acc is not None


def test_leaderboard_cache_evaluates_an_npo_run_as_evaluate_does(runs, tmp_path):
    """The leaderboard's cached path guides the tuned side of an NPO run (base + NPO) and gives
    evaluate's report exactly; a negative model on the baseline side is refused, not dropped."""
    from lightning_pref.evaluation.base_cache import BaseCache, evaluate_run_cached

    expected = _evaluate("--run", str(runs["npo"]), out=tmp_path / "plain")
    cache = BaseCache()
    for _ in range(2):  # a miss, then a hit on the plain base's samples
        report, _use = evaluate_run_cached(
            parse_evaluate_args(["--run", str(runs["npo"]), *FAST]), cache
        )
        assert report.scores == expected.scores
        assert (report.wins, report.ties, report.losses) == (
            expected.wins,
            expected.ties,
            expected.losses,
        )
        assert report.negative == str(runs["npo"])
    with pytest.raises(ConfigError, match="not cached"):
        evaluate_run_cached(
            parse_evaluate_args(["--run", str(runs["dpo"]), "--baseline", str(runs["npo"]), *FAST]),
            cache,
        )
