"""``python -m lightning_pref export``: diffusers pipelines and LoRA files that sample as ours do.

A tiny SD pipeline folder (real diffusers layout) is tuned for 2 steps of DPO, fully (with EMA) and
through LoRA (rank 4, alpha 8: PEFT scale 2, so a file without the folded scale samples
differently). Each export is loaded with diffusers and must give the images of
:func:`lightning_pref.models.sampling.sample_images` for the same x_T: DDIM, 4 steps, CFG 5.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from lightning_pref.__main__ import main
from lightning_pref.callbacks.ema import ema_state_from_checkpoint
from lightning_pref.commands.export import export_policy
from lightning_pref.models import DiffusionPolicy, TinyDiffusionPolicy, save_tiny_pipeline
from lightning_pref.models.sampling import ddim_timesteps, sample_images
from lightning_pref.runs import find_run, load_module

ROOT = Path(__file__).parents[1]
CAPTIONS = ["a red circle", "two blue squares"]
STEPS, CFG, SEED = 4, 5.0, 3
TOL = {"atol": 1e-5, "rtol": 0.0}


def fit(save_dir: Path, model_dir: Path, *extra: str) -> Path:
    main(
        [
            "fit", "--config", "tests/configs/tiny_dpo.yaml", "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={save_dir}",
            "--model.init_args.policy", "lightning_pref.models.DiffusionPolicy",
            "--model.init_args.policy.init_args.pretrained", str(model_dir),
            *extra,
        ]
    )  # fmt: skip
    return next(save_dir.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    sd = save_tiny_pipeline(root / "sd", seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        full = fit(
            root / "full",
            sd,
            '--trainer.callbacks+={"class_path": "lightning_pref.callbacks.EMA", '
            '"init_args": {"decay": 0.5}}',
        )
        lora = fit(
            root / "lora",
            sd,
            "--model.init_args.policy.init_args.lora_rank=4",
            "--model.init_args.policy.init_args.lora_alpha=8",
            "--model.init_args.optimizer.init_args.lr=5.0e-2",
        )
    return SimpleNamespace(root=root, sd=sd, full=full, lora=lora)


def export(ckpt: Path, out: Path, *extra: str) -> Path:
    main(["export", "--ckpt_path", str(ckpt), "--out", str(out), *extra])
    return out


def ours(policy: DiffusionPolicy) -> torch.Tensor:
    """The framework's DDIM + CFG images, mapped from [-1, 1] to the pipeline's [0, 1]."""
    gen = torch.Generator().manual_seed(SEED)
    images = sample_images(policy, CAPTIONS, gen, num_steps=STEPS, guidance_scale=CFG)
    return images / 2 + 0.5


def theirs(pipe: StableDiffusionPipeline, channels: int = 4, size: int = 8) -> torch.Tensor:
    # x_T drawn as sample_images draws it: the generator's first randn, [N, C, h, w]
    latents = torch.randn(
        (len(CAPTIONS), channels, size, size), generator=torch.Generator().manual_seed(SEED)
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        CAPTIONS, num_inference_steps=STEPS, guidance_scale=CFG, latents=latents, output_type="pt"
    )
    return out.images


def trained_policy(ckpt: Path, ema: bool = False) -> DiffusionPolicy:
    run = find_run(ckpt)
    return load_module(run.config, run.ckpt, ema).policy


def test_full_export_is_a_ddim_pipeline_that_samples_like_ours(runs):
    """Same x_T, same DDIM timesteps 751, 501, 251, 1 (leading, offset 1), same images."""
    out = export(runs.full, runs.root / "out_full")
    for part in ("unet", "vae", "text_encoder"):
        assert list((out / part).glob("*.safetensors")), part
    assert (out / "tokenizer").is_dir() and (out / "model_index.json").is_file()
    assert json.loads((out / "export.json").read_text())["kind"] == "pipeline"

    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    pipe.scheduler.set_timesteps(STEPS)
    assert pipe.scheduler.timesteps.tolist() == ddim_timesteps(1000, STEPS) == [751, 501, 251, 1]

    policy = trained_policy(runs.full)
    base_unet = StableDiffusionPipeline.from_pretrained(runs.sd).unet.state_dict()
    exported = pipe.unet.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in policy.unet.state_dict().items())
    assert any(not torch.equal(exported[k], v) for k, v in base_unet.items())  # it trained
    torch.testing.assert_close(theirs(pipe), ours(policy), **TOL)


def test_ema_export_writes_the_averaged_weights(runs):
    out = export(runs.full, runs.root / "out_ema", "--ema", "true")
    averaged = ema_state_from_checkpoint(torch.load(runs.full, weights_only=True))
    unet = StableDiffusionPipeline.from_pretrained(out).unet.state_dict()
    plain = trained_policy(runs.full).unet.state_dict()
    prefix = "policy.unet."
    assert all(torch.equal(unet[k.removeprefix(prefix)], v) for k, v in averaged.items())
    assert any(not torch.equal(unet[k], v) for k, v in plain.items())


def test_lora_export_loads_into_the_base_pipeline(runs):
    """base pipeline + load_lora_weights(out) = our LoRA policy; the adapters change the images."""
    out = export(runs.lora, runs.root / "out_lora")
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ".lora" in k for k in weights)
    info = json.loads((out / "export.json").read_text())
    assert info["kind"] == "lora" and info["base_model"]["pretrained"] == str(runs.sd)
    assert str(runs.sd) in (out / "README.md").read_text()

    pipe = StableDiffusionPipeline.from_pretrained(runs.sd)
    pipe.scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    base = theirs(pipe)
    pipe.load_lora_weights(out)
    tuned = theirs(pipe)
    torch.testing.assert_close(tuned, ours(trained_policy(runs.lora)), **TOL)
    assert (tuned - base).abs().max() > 1e-3  # 100x the match tolerance


def test_float16_export_writes_half_weights(runs, tmp_path):
    out = export(runs.lora, tmp_path / "out", "--dtype", "float16")
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    assert json.loads((out / "export.json").read_text())["dtype"] == "float16"


def test_merged_lora_export_is_a_full_pipeline(runs, tmp_path):
    """A checkpoint copied out of its run folder, with --config, folded into a full pipeline."""
    copied = tmp_path / "copied.ckpt"
    copied.write_bytes(runs.lora.read_bytes())
    config = find_run(runs.lora).config
    out = export(copied, tmp_path / "out", "--config", str(config), "--merge_lora", "true")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert not any("lora" in k for k in pipe.unet.state_dict())
    torch.testing.assert_close(theirs(pipe), ours(trained_policy(runs.lora)), **TOL)


def test_v_prediction_export_keeps_the_prediction_type(tmp_path):
    """A v-prediction model: the DDIM scheduler converts v as our sampler does."""
    policy = TinyDiffusionPolicy(prediction_type="v_prediction", seed=4)
    policy.build()
    export_policy(policy, tmp_path / "v")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "v")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(theirs(pipe), ours(policy), **TOL)


def test_pixel_space_export_reloads_in_our_loader(tmp_path):
    """No VAE: SD layout without model_index.json; reloaded, it samples the same images."""
    policy = TinyDiffusionPolicy(with_vae=False, seed=2)
    policy.build()
    before = ours(policy)
    info = export_policy(policy, tmp_path / "px")
    assert info["kind"] == "components"
    assert not (tmp_path / "px" / "model_index.json").exists()
    assert not (tmp_path / "px" / "vae").exists()
    reloaded = DiffusionPolicy(pretrained=str(tmp_path / "px"))
    reloaded.build()
    torch.testing.assert_close(ours(reloaded), before, **TOL)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("sharded", "is incomplete"),
        ("not_empty", "--overwrite true"),
        ("no_config", "--config"),
        ("no_ema", "no EMA weights"),
    ],
)
def test_export_errors_are_one_line(runs, tmp_path, capsys, case, message):
    ckpt, out, extra = runs.lora, tmp_path / "out", []
    if case == "missing":
        ckpt = tmp_path / "nope.ckpt"
    elif case == "sharded":  # what FSDP's sharded state dict writes
        ckpt = tmp_path / "last.ckpt"
        ckpt.mkdir()
        (ckpt / "meta.pt").write_bytes(b"")
    elif case == "no_config":
        ckpt = tmp_path / "copied.ckpt"
        ckpt.write_bytes(runs.lora.read_bytes())
    elif case == "not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    else:
        extra = ["--ema", "true"]
    with pytest.raises(SystemExit) as exit_info:
        export(ckpt, out, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # may start with transformers' loading bars
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and err.count("error:") == 1
