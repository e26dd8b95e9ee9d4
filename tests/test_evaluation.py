"""Evaluation of a tuned run against its base: run loading, win rate, diversity, CLI outputs."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_pref.__main__ import main
from lightning_pref.data import PickAPicDataModule
from lightning_pref.errors import ConfigError
from lightning_pref.evaluation.compare import (
    SamplingOptions,
    evaluate_policies,
    implicit_accuracy,
    save_grid,
)
from lightning_pref.evaluation.prompt_sets import read_prompts
from lightning_pref.evaluation.report import Z_95, EvalReport
from lightning_pref.evaluation.report import win_stats as _win_stats
from lightning_pref.evaluation.scorers import GoldScorer
from lightning_pref.minipick import prompts as minipick_prompts
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.models.sampling import derive_seed, sample_images, sample_plan, sample_seeded
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.runs import RunPaths, find_run, load_module
from lightning_pref.scoring import Scorer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny_dpo.yaml")
VAL_FILES = str(ROOT / "tests" / "assets" / "pickapic_tiny" / "validation_unique")
SAMPLING = {"num_steps": 3, "guidance_scale": 5.0, "eta": 0.0}


class Brightness(Scorer):
    """Mean pixel value: a cheap stand-in for a reward model."""

    def forward(self, images, captions, timesteps=None):
        return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    # spinning threads made each UNet call ~100x slower (seen: 2.5 s instead of 10 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 3-step Diffusion-DPO run (lr 1e-3 so the weights visibly move)."""
    save_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")  # pytest argv
        mp.chdir(ROOT)
        main(
            [
                "fit",
                "--config",
                TINY,
                "--trainer.max_steps",
                "3",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger.init_args.save_dir",
                str(save_dir),
                "--model.init_args.optimizer.init_args.lr",
                "1.0e-3",
                "--model.init_args.lr_scheduler",
                "null",
            ]
        )
    return save_dir / "tiny_dpo" / "version_0"


@pytest.fixture(scope="module")
def modules(run_dir):
    config = run_dir / "config.yaml"
    return load_module(config, run_dir / "checkpoints" / "last.ckpt"), load_module(config)


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the run's config names its data relative to the repo root


# ------------------------------------------------------------------ runs.py
def test_find_run_from_version_folder_and_checkpoint(run_dir):
    expected = RunPaths(
        (run_dir / "config.yaml").resolve(), (run_dir / "checkpoints" / "last.ckpt").resolve()
    )
    assert find_run(run_dir) == expected
    assert find_run(run_dir / "checkpoints" / "last.ckpt") == expected
    assert find_run(run_dir.parent) == expected  # runs/NAME: its newest version with a checkpoint


def test_find_run_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        find_run(tmp_path / "missing")
    (tmp_path / "empty_run" / "version_0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no version_N with a checkpoint"):
        find_run(tmp_path / "empty_run")
    (tmp_path / "x.yaml").write_text("a: 1\n")
    with pytest.raises(ConfigError, match="not a .ckpt"):
        find_run(tmp_path / "x.yaml")
    orphan = tmp_path / "checkpoints" / "last.ckpt"
    orphan.parent.mkdir()
    orphan.write_bytes(b"")
    with pytest.raises(ConfigError, match="no config.yaml"):
        find_run(orphan)


def test_load_module_with_checkpoint_reproduces_trained_weights(run_dir, modules):
    tuned, base = modules
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    loaded = tuned.state_dict()
    assert set(loaded) == set(saved) and all(k.startswith("policy.unet.") for k in saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not tuned.training and not tuned.policy.unet.training
    # the weights moved in training, so the check above compares something
    assert any(not torch.equal(base.state_dict()[k], saved[k]) for k in saved)


def test_load_module_without_checkpoint_is_the_base_model(modules):
    _, base = modules
    fresh = TinyDiffusionPolicy(sample_size=8, seed=0)
    fresh.build()
    expected = fresh.unet.state_dict()
    loaded = base.policy.unet.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_load_module_refuses_a_checkpoint_of_another_model(run_dir, tmp_path):
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    dropped = sorted(checkpoint["state_dict"])[0]
    del checkpoint["state_dict"][dropped]
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match=r"1 missing, 0 unexpected"):
        load_module(run_dir / "config.yaml", tmp_path / "bad.ckpt")


def test_read_prompts_lines_json_and_default(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.json").write_text('["x", " y "]')
    assert read_prompts(tmp_path / "p.json") == ["x", "y"]
    assert read_prompts(None) == minipick_prompts("test")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="JSON list of strings"):
        read_prompts(tmp_path / "bad.json")


# ------------------------------------------------------------------ sampling and statistics
def test_seeded_sampling_equals_sample_images_and_ignores_batching(modules):
    _, base = modules
    policy = base.policy
    captions, seeds = sample_plan(["a red circle", "a blue square"], 3, seed=5)
    assert captions == ["a red circle", "a blue square", "a red circle"]
    assert seeds == [derive_seed(5, "sample", i) for i in range(3)]
    batched = sample_seeded(policy, captions, seeds, **SAMPLING)  # [3, 3, 16, 16]
    assert batched.shape == (3, 3, 16, 16)
    for i in range(3):
        gen = torch.Generator().manual_seed(seeds[i])
        reference = sample_images(policy, [captions[i]], gen, **SAMPLING)
        assert torch.equal(sample_seeded(policy, [captions[i]], [seeds[i]], **SAMPLING), reference)
        torch.testing.assert_close(batched[i : i + 1], reference, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[2])  # same prompt, other seed


def test_win_stats_exact():
    """outcomes [1, 0, 0.5 (|d| = 1e-7 <= 1e-6), 0.5] -> rate 0.5; sample std sqrt(0.5 / 3)."""
    tuned = torch.tensor([1.0, 0.0, 0.5 + 1e-7, 2.0], dtype=torch.float64)
    base = torch.tensor([0.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    rate, (low, high), counts = _win_stats(tuned, base)
    half = Z_95 * math.sqrt(0.5 / 3) / 2
    assert rate == 0.5 and counts == [1, 2, 1]
    assert low == pytest.approx(0.5 - half, abs=1e-12)
    assert high == pytest.approx(0.5 + half, abs=1e-12)
    assert _win_stats(tuned[:1], base[:1])[1] == (0.0, 1.0)  # one sample: no information
    assert _win_stats(tuned[:2] + 5, base[:2])[1] == (1.0, 1.0)  # clipped


def test_base_against_base_is_all_ties_and_deterministic(run_dir):
    base_a = load_module(run_dir / "config.yaml").policy
    base_b = load_module(run_dir / "config.yaml").policy  # another instance, same weights
    prompts = ["a red circle", "a blue square", "a green cross"]

    def evaluate() -> EvalReport:
        return evaluate_policies(
            base_a,
            base_b,
            prompts,
            {"gold": Brightness()},
            "gold",
            num_samples=5,
            seed=3,
            options=SamplingOptions(batch_size=2, samples_per_prompt_for_diversity=3, **SAMPLING),
        )

    report = evaluate()
    assert (report.win_rate, report.win_rate_ci) == (0.5, (0.5, 0.5))
    assert (report.wins, report.ties, report.losses) == (0, 5, 0)
    stats = report.scores["gold"]
    assert (stats.base_mean, stats.base_std) == (stats.tuned_mean, stats.tuned_std)
    assert report.diversity_base == report.diversity_tuned and report.diversity_base > 0
    assert (report.num_samples, report.num_prompts) == (5, 3)
    assert evaluate().to_json() == report.to_json()


def test_tuned_against_base_report_matches_the_samples(modules):
    tuned, base = modules
    prompts = ["a red circle", "a blue square"]
    report = evaluate_policies(
        base.policy,
        tuned.policy,
        prompts,
        {"gold": Brightness()},
        "gold",
        num_samples=6,
        seed=1,
        options=SamplingOptions(
            batch_size=4, samples_per_prompt_for_diversity=3, num_diversity_prompts=1, **SAMPLING
        ),
    )
    captions, seeds = sample_plan(prompts, 6, seed=1)
    scores = {
        name: Brightness()(sample_seeded(m.policy, captions, seeds, **SAMPLING), captions).double()
        for name, m in (("base", base), ("tuned", tuned))
    }
    diff = scores["tuned"] - scores["base"]
    assert (diff.abs() > 1e-6).all()  # training changed every image measurably
    wins = int((diff > 0).sum())
    assert (report.wins, report.ties, report.losses) == (wins, 0, 6 - wins)
    outcome = (diff > 0).double()
    half = Z_95 * float(outcome.std()) / math.sqrt(6)
    assert report.win_rate == pytest.approx(wins / 6, abs=1e-12)
    assert report.win_rate_ci[0] == pytest.approx(max(0.0, wins / 6 - half), abs=1e-12)
    assert report.win_rate_ci[1] == pytest.approx(min(1.0, wins / 6 + half), abs=1e-12)
    assert report.win_rate_ci[0] <= report.win_rate <= report.win_rate_ci[1]
    stats = report.scores["gold"]
    assert stats.base_mean == pytest.approx(float(scores["base"].mean()), abs=1e-6)
    assert stats.tuned_std == pytest.approx(float(scores["tuned"].std(correction=0)), abs=1e-6)
    # diversity: 3 images of the first prompt, mean of the 3 pairwise RMS distances
    seeds = [derive_seed(1, "diversity", 0, j) for j in range(3)]
    images = sample_seeded(base.policy, [prompts[0]] * 3, seeds, **SAMPLING).double()
    rms = [(images[a] - images[b]).pow(2).mean().sqrt() for a, b in ((0, 1), (0, 2), (1, 2))]
    assert report.diversity_base == pytest.approx(float(sum(rms) / 3), abs=1e-6)


def test_unknown_gold_scorer_is_a_config_error(modules):
    _, base = modules
    with pytest.raises(ConfigError, match="'pick' is not among the scorers"):
        evaluate_policies(base.policy, base.policy, ["a"], {"gold": Brightness()}, "pick", 1, 0)


def test_implicit_accuracy(modules):
    """Base vs base: every inside is 0, so no pair counts. One draw: DiffusionDPO's metric."""
    tuned, base = modules
    data = PickAPicDataModule(val_files=VAL_FILES, resolution=16, batch_size=8)
    data.setup("validate")
    loader = data.val_dataloader()
    assert implicit_accuracy(base, base.policy, loader, seed=0) == 0.0
    probe = OfflinePairModule(tuned.policy, DiffusionDPO(), reference="copy")
    probe.reference_unet = base.policy.unet
    batch = next(iter(loader))  # all 7 non-tie pairs
    gen = torch.Generator().manual_seed(derive_seed(0, "implicit", 0))
    with torch.no_grad():
        out = DiffusionDPO()(probe.denoise_pair(probe.to_latents(batch, gen), gen))
    acc = implicit_accuracy(tuned, base.policy, loader, seed=0, num_draws=1)
    assert acc == pytest.approx(float(out.metrics["implicit_acc"]), abs=1e-6)
    assert acc * 7 == pytest.approx(round(acc * 7), abs=1e-9)
    four = implicit_accuracy(tuned, base.policy, loader, seed=0, num_draws=4)
    assert four == implicit_accuracy(tuned, base.policy, loader, seed=0, num_draws=4)


def test_save_grid_upscales_with_nearest_neighbour(tmp_path):
    base = torch.full((3, 3, 2, 2), -1.0)
    tuned = torch.full((3, 3, 2, 2), 1.0)
    tuned[0, :, 0, 0] = -1.0
    grid = save_grid(base, tuned, ["a", "b", "c"], tmp_path / "g.png", scale=4, max_columns=2)
    image = torch.from_numpy(np.array(Image.open(tmp_path / "g.png")))
    assert tuple(image.shape) == (2 * 10 + 2, 2 * 10 + 2, 3)  # 2 columns of 8 px + 2 px gutters
    assert torch.equal(grid, image.permute(2, 0, 1))
    assert (image[2:10, 2:10] == 0).all()  # base, black
    assert (image[12:16, 2:6] == 0).all() and (image[12:20, 6:10] == 255).all()  # tuned
    assert (tmp_path / "g.txt").read_text() == "rows: baseline, tuned; columns:\n1. a\n2. b"


# ------------------------------------------------------------------ CLI
def _image_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for event_file in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    return tags


CLI_FAST = [
    "--num_samples",
    "4",
    "--num_steps",
    "2",
    "--batch_size",
    "4",
    "--diversity_samples",
    "2",
]


def test_evaluate_cli_writes_report_grid_and_events(run_dir, tmp_path, capsys, in_root):
    out = tmp_path / "eval"
    main(["evaluate", "--run", str(run_dir), "--out", str(out), *CLI_FAST])
    report = json.loads((out / "report.json").read_text())
    assert (report["num_samples"], report["num_prompts"], report["num_steps"]) == (4, 4, 2)
    parts = {f"gold.{p}" for p in GoldScorer.part_names}
    assert report["gold"] == "gold" and set(report["scores"]) == {"gold"} | parts
    assert parts >= {"gold.fidelity", "gold.taste", "gold.color", "gold.tone"}
    scores = report["scores"]
    for model in ("base", "tuned"):  # the gold reward is 0.80 fidelity + 0.20 taste
        mean = (
            0.8 * scores["gold.fidelity"][f"{model}_mean"]
            + 0.2 * scores["gold.taste"][f"{model}_mean"]
        )
        assert mean == pytest.approx(scores["gold"][f"{model}_mean"], abs=1e-6)
    assert 0.0 <= scores["gold.fidelity"]["win_rate"] <= 1.0
    assert report["wins"] + report["ties"] + report["losses"] == 4
    assert report["win_rate_ci"][0] <= report["win_rate"] <= report["win_rate_ci"][1]
    assert 0.0 <= report["implicit_acc"] <= 1.0  # from the run's own validation files
    assert report["tuned"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    assert Image.open(out / "grid.png").size == (4 * 66 + 2, 2 * 66 + 2)  # 16 px x4 + gutters
    legend = (out / "grid.txt").read_text().splitlines()[1:]
    assert legend == [f"{i + 1}. {p}" for i, p in enumerate(minipick_prompts("test")[:4])]
    assert {"eval/grid", "eval/win_rate", "eval/gold_tuned", "eval/implicit_acc"} <= _image_tags(
        out
    )
    stdout = capsys.readouterr().out
    assert "| metric | baseline | tuned |" in stdout and "win rate (gold)" in stdout


def test_evaluate_cli_honours_prompts_scorers_baseline_and_config(run_dir, tmp_path):
    prompts = minipick_prompts("test")[5:7]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    scorers = {"g": {"class_path": "lightning_pref.evaluation.scorers.GoldScorer"}}
    config = {"prompts": str(tmp_path / "prompts.txt"), "scorers": scorers, "gold": "g"}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "eval.yaml"), "--baseline", str(ckpt)]
    main(["evaluate", "--run", str(ckpt), *args, "--implicit_draws", "0", "--seed", "7", *CLI_FAST])
    out = run_dir / "eval_seed7"  # the default output folder
    report = json.loads((out / "report.json").read_text())
    assert report["num_prompts"] == 2 and {"g", "g.fidelity", "g.taste"} <= set(report["scores"])
    assert (report["win_rate"], report["ties"]) == (0.5, 4)  # the run against itself
    assert report["implicit_acc"] is None and report["baseline"] == str(ckpt.resolve())
    legend = (out / "grid.txt").read_text().splitlines()[1:]
    assert legend == [f"{i + 1}. {p}" for i, p in enumerate(prompts * 2)]


def test_evaluate_cli_missing_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: run path '{tmp_path / 'nope'}' does not exist; pass runs/NAME/version_N or a .ckpt"
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--num_samples", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "run" in err[0]


def test_gold_rater_names_a_caption_it_cannot_score():
    from lightning_pref.evaluation.scorers import GoldScorer

    GoldScorer.check_captions(["a large red circle on the left", "a small blue square at the top"])
    with pytest.raises(ConfigError, match="'a small blue square'"):
        GoldScorer.check_captions(["a large red circle on the left", "a small blue square"])
