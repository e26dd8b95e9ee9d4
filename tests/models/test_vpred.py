"""v-prediction (SD2.x) backbone: loading, the DDIM step on v, and 2-step DPO/SPO runs."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from torch.testing import assert_close

from lightning_pref.__main__ import main
from lightning_pref.models import DiffusionPolicy, save_tiny_clip, save_tiny_vpred_pipeline
from lightning_pref.models.sampling import ddim_step, sample_images
from lightning_pref.runs import load_module

ROOT = Path(__file__).parents[2]
CAPTIONS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def vpred_dir(tmp_path_factory) -> Path:
    return save_tiny_vpred_pipeline(tmp_path_factory.mktemp("tiny_sd2") / "sd2", seed=4)


@pytest.fixture(scope="module")
def vpred_policy(vpred_dir) -> DiffusionPolicy:
    policy = DiffusionPolicy(pretrained=str(vpred_dir))
    policy.build()
    return policy


def test_sd2_layout_loads_as_v_prediction(vpred_dir, vpred_policy):
    config = json.loads((vpred_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler" and config["prediction_type"] == "v_prediction"
    assert vpred_policy.prediction_type == "v_prediction" and not vpred_policy.is_sdxl
    assert vpred_policy.noise_scheduler.config.clip_sample is False
    assert vpred_policy.unet.config.use_linear_projection is True
    assert vpred_policy.tokenizer("a").input_ids == [512, 320, 513]
    assert vpred_policy.tokenizer.pad_token == "!"
    assert vpred_policy.encode_prompt(CAPTIONS).shape == (2, 16, 16)


def test_ddim_step_on_the_true_v_recovers_x0_and_eps(vpred_policy):
    """With x_t = √ā x0 + √(1-ā) ε and v = √ā ε - √(1-ā) x0 (the training target):
    √ā x_t - √(1-ā) v = ā x0 + (1-ā) x0 = x0, and √ā v + √(1-ā) x_t = ε, so the η=0 step is
    √ā_prev x0 + √(1-ā_prev) ε exactly."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, t_prev = torch.tensor([501, 901]), torch.tensor([451, 851])
    x_t = vpred_policy.add_noise(x0, eps, t)
    v = vpred_policy.training_target(x0, eps, t)
    step = ddim_step(vpred_policy, v, x_t, t, t_prev, eta=0.0)
    assert_close(step.pred_x0, x0, rtol=0, atol=1e-5)
    assert_close(step.eps, eps, rtol=0, atol=1e-5)
    a_prev = vpred_policy.alphas_cumprod[t_prev].view(-1, 1, 1, 1)
    assert_close(
        step.prev_sample, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-5, rtol=0
    )


def test_ddim_step_matches_the_folders_ddim_scheduler(vpred_dir, vpred_policy):
    """Our step on a v output equals diffusers' DDIMScheduler (v_prediction, η=0), 20 steps."""
    scheduler = DDIMScheduler.from_pretrained(str(vpred_dir), subfolder="scheduler")
    scheduler.set_timesteps(20)
    assert scheduler.timesteps[:2].tolist() == [951, 901]
    g = torch.Generator().manual_seed(1)
    x_t, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t_int in (951, 501, 1):
        t = torch.full((2,), t_int)
        ours = ddim_step(vpred_policy, out, x_t, t, t - 50, eta=0.0).prev_sample
        theirs = scheduler.step(out, t_int, x_t, eta=0.0).prev_sample
        assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ 2-step runs
def _fit(fit_tiny, config: str, folder: Path, save_dir: Path, lora: bool) -> Path:
    """Train 2 steps of ``config`` with the policy loaded from ``folder``; return the version."""
    policy = "--model.init_args.policy"
    args = [
        f"{policy}=lightning_pref.models.DiffusionPolicy",
        f"{policy}.init_args.pretrained={folder}",
    ]
    args += ["--model.init_args.optimizer.init_args.lr=1.0e-3"]
    if lora:
        args += [f"{policy}.init_args.lora_rank=4"]
    return fit_tiny(config, save_dir, *args)


RUNS = [
    ("tiny_dpo_vpred.yaml", True),
    ("tiny_dpo_vpred.yaml", False),
    ("tiny_spo_vpred.yaml", True),
    ("tiny_spo_vpred.yaml", False),
]


@pytest.mark.parametrize(
    ("config", "lora"), RUNS, ids=["dpo-lora", "dpo-full", "spo-lora", "spo-full"]
)
def test_two_steps_train_and_change_samples(config, lora, vpred_dir, tmp_path, fit_tiny):
    version = _fit(fit_tiny, config, vpred_dir, tmp_path, lora)
    ckpt = version / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 2
    assert all(("lora_" in k) == lora for k in saved["state_dict"])
    tuned = load_module(version / "config.yaml", ckpt)
    base = load_module(version / "config.yaml")
    assert tuned.policy.prediction_type == "v_prediction"
    base_state = base.state_dict()
    changed = [k for k, v in saved["state_dict"].items() if not torch.equal(v, base_state[k])]
    assert changed, "no parameter moved in 2 steps"
    images = [
        sample_images(m.policy, CAPTIONS, torch.Generator().manual_seed(0), num_steps=2)
        for m in (base, tuned)
    ]
    assert images[0].shape == images[1].shape == (2, 3, 16, 16)
    assert (images[0] - images[1]).abs().max() > 1e-5


def test_evaluate_cli_on_a_trained_vpred_run(vpred_dir, tmp_path, monkeypatch, fit_tiny):
    version = _fit(fit_tiny, "tiny_spo_vpred.yaml", vpred_dir, tmp_path / "runs", False)
    clip = save_tiny_clip(tmp_path / "clip")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    scorer = {"class_path": "lightning_pref.scoring.PretrainedPickScore"}
    scorer["init_args"] = {"pretrained": str(clip), "processor_path": str(clip)}
    out = tmp_path / "eval"
    main(
        ["evaluate", "--run", str(version), "--out", str(out)]
        + ["--prompts", str(tmp_path / "prompts.txt"), "--scorers", json.dumps({"pick": scorer})]
        + ["--gold", "pick", "--num_samples", "2", "--num_steps", "2", "--batch_size", "2"]
        + ["--diversity_samples", "2"]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 2 and set(report["scores"]) == {"pick"}
    assert report["wins"] + report["ties"] + report["losses"] == 2
    assert report["implicit_acc"] is None  # an SPO run has no validation pairs
