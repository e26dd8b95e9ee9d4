"""``python -m lightning_pref export`` of SDXL policies: StableDiffusionXLPipeline folders, LoRA.

A tiny SDXL pipeline folder (real layout: two text encoders, Euler scheduler) is tuned for 2 steps
of DPO, fully and through LoRA (rank 4, alpha 8: PEFT scale 2, so a file without the folded scale
samples differently). Each export is loaded with diffusers and must give the images of
:func:`lightning_pref.models.sampling.sample_images` for the same x_T: DDIM, 4 steps, CFG 5. The
SDXL pipeline is called with the size conditioning spelled out, ``original_size = target_size =
(16, 16)`` and crop ``(0, 0)``: 8 latent px x VAE factor 2, the policy's ``(H, W, 0, 0, H, W)``.
Its negative prompt is left at None: the empty prompt, zeroed by ``force_zeros_for_empty_prompt``.
"""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from lightning_pref.__main__ import main
from lightning_pref.commands.export import export_policy
from lightning_pref.models import DiffusionPolicy, TinyDiffusionPolicy, save_tiny_sdxl_pipeline
from lightning_pref.models.sampling import ddim_timesteps, sample_images
from lightning_pref.runs import find_run, load_module

ROOT = Path(__file__).parents[1]
CAPTIONS = ["a red circle", "two blue squares"]
STEPS, CFG, SEED, SIZE = 4, 5.0, 3, 16  # SIZE: image pixels (8 latent px x VAE factor 2)
TOL = {"atol": 1e-5, "rtol": 0.0}


def fit(save_dir: Path, model_dir: Path, *extra: str) -> Path:
    policy = "--model.init_args.policy"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        main(
            [
                "fit", "--config", "tests/configs/tiny_dpo_sdxl.yaml", "--trainer.max_steps=2",
                "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_progress_bar=false",
                f"--trainer.logger.init_args.save_dir={save_dir}",
                f"{policy}=lightning_pref.models.DiffusionPolicy",
                f"{policy}.init_args.pretrained={model_dir}",
                *extra,
            ]
        )  # fmt: skip
    return next(save_dir.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_sdxl")
    sdxl = save_tiny_sdxl_pipeline(root / "sdxl", seed=2)
    policy = "--model.init_args.policy.init_args"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        full = fit(root / "full", sdxl, "--model.init_args.optimizer.init_args.lr=1.0e-3")
        lora = fit(
            root / "lora",
            sdxl,
            f"{policy}.lora_rank=4",
            f"{policy}.lora_alpha=8",
            "--model.init_args.optimizer.init_args.lr=5.0e-2",
        )
    return SimpleNamespace(root=root, sdxl=sdxl, full=full, lora=lora)


def export(ckpt: Path, out: Path, *extra: str) -> Path:
    main(["export", "--ckpt_path", str(ckpt), "--out", str(out), *extra])
    return out


def ours(policy: DiffusionPolicy) -> torch.Tensor:
    """The framework's DDIM + CFG images, mapped from [-1, 1] to the pipeline's [0, 1]."""
    gen = torch.Generator().manual_seed(SEED)
    images = sample_images(policy, CAPTIONS, gen, num_steps=STEPS, guidance_scale=CFG)
    return images / 2 + 0.5


def theirs(pipe: StableDiffusionXLPipeline, size_ids: bool = True) -> torch.Tensor:
    """The pipeline's images; ``size_ids=False`` leaves the size conditioning at its defaults."""
    # x_T drawn as sample_images draws it: the generator's first randn, [N, 4, 8, 8]
    latents = torch.randn((len(CAPTIONS), 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    sizes = {
        "original_size": (SIZE, SIZE),
        "crops_coords_top_left": (0, 0),
        "target_size": (SIZE, SIZE),
    }
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        CAPTIONS,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        latents=latents,
        height=SIZE,
        width=SIZE,
        output_type="pt",
        **(sizes if size_ids else {}),
    )
    return out.images


def trained_policy(ckpt: Path) -> DiffusionPolicy:
    run = find_run(ckpt)
    return load_module(run.config, run.ckpt).policy


def test_full_export_is_an_sdxl_ddim_pipeline_that_samples_like_ours(runs):
    """Same x_T, same DDIM timesteps 751, 501, 251, 1 (leading, offset 1), same images."""
    out = export(runs.full, runs.root / "out_full")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert list((out / part).glob("*.safetensors")), part
    assert (out / "tokenizer").is_dir() and (out / "tokenizer_2").is_dir()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    info = json.loads((out / "export.json").read_text())
    assert info["pipeline"] == "StableDiffusionXLPipeline"
    assert info["force_zeros_for_empty_prompt"] is True

    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, StableDiffusionXLPipeline) and pipe.watermark is None
    assert isinstance(pipe.scheduler, DDIMScheduler)
    pipe.scheduler.set_timesteps(STEPS)
    assert pipe.scheduler.timesteps.tolist() == ddim_timesteps(1000, STEPS) == [751, 501, 251, 1]

    policy = trained_policy(runs.full)
    base = StableDiffusionXLPipeline.from_pretrained(runs.sdxl)
    exported = pipe.unet.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in policy.unet.state_dict().items())
    assert any(not torch.equal(exported[k], v) for k, v in base.unet.state_dict().items())
    for name in ("text_encoder", "text_encoder_2", "vae"):  # frozen parts: written unchanged
        want = getattr(base, name).state_dict()
        got = getattr(pipe, name).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items()), name
    images = theirs(pipe)
    torch.testing.assert_close(images, ours(policy), **TOL)
    # the pipeline's defaults for height=width=16 are the same ids: (16, 16), (0, 0), (16, 16)
    torch.testing.assert_close(theirs(pipe, size_ids=False), images, rtol=0, atol=0)


def test_lora_export_loads_into_the_base_sdxl_pipeline(runs):
    """base pipeline + load_lora_weights(out) = our LoRA policy; the adapters change the images."""
    out = export(runs.lora, runs.root / "out_lora")
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ".lora" in k for k in weights)
    info = json.loads((out / "export.json").read_text())
    assert info["kind"] == "lora" and info["pipeline"] == "StableDiffusionXLPipeline"
    assert info["base_model"]["pretrained"] == str(runs.sdxl)
    readme = (out / "README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in readme and str(runs.sdxl) in readme

    pipe = StableDiffusionXLPipeline.from_pretrained(runs.sdxl, force_zeros_for_empty_prompt=True)
    pipe.scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    base = theirs(pipe)
    pipe.load_lora_weights(out)
    tuned = theirs(pipe)
    torch.testing.assert_close(tuned, ours(trained_policy(runs.lora)), **TOL)
    assert (tuned - base).abs().max() > 1e-3  # 100x the match tolerance


def test_merged_sdxl_lora_export_is_a_full_pipeline(runs, tmp_path):
    out = export(runs.lora, tmp_path / "out", "--merge_lora", "true")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert not any("lora" in k for k in pipe.unet.state_dict())
    torch.testing.assert_close(theirs(pipe), ours(trained_policy(runs.lora)), **TOL)


def test_force_zeros_flag_is_written_into_the_pipeline_config(runs, tmp_path):
    """A policy that encodes "" (flag False) exports a pipeline that does too, and samples alike.

    Same weights as the tiny folder (flag True): the zero and the encoded "" unconditional
    embeddings give different CFG images, so the flag written into the config is the one used.
    """
    policy = DiffusionPolicy(pretrained=str(runs.sdxl), force_zeros_for_empty_prompt=False)
    policy.build()
    export_policy(policy, tmp_path / "encoded")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "encoded")
    assert pipe.config.force_zeros_for_empty_prompt is False
    images = theirs(pipe)
    torch.testing.assert_close(images, ours(policy), **TOL)
    zeroed = DiffusionPolicy(pretrained=str(runs.sdxl))
    zeroed.build()
    assert zeroed.zero_empty_prompt
    assert (images - ours(zeroed)).abs().max() > 1e-3


def test_pixel_space_sdxl_export_reloads_in_our_loader(tmp_path):
    """No VAE: both text encoders and tokenizers in the layout; reloaded, the same images."""
    policy = TinyDiffusionPolicy(with_vae=False, seed=2, sdxl=True)
    policy.build()
    gen = torch.Generator().manual_seed(SEED)
    before = sample_images(policy, CAPTIONS, gen, num_steps=STEPS, guidance_scale=CFG)
    info = export_policy(policy, tmp_path / "px")
    assert info["kind"] == "components" and info["force_zeros_for_empty_prompt"] is True
    for part in ("text_encoder_2", "tokenizer_2"):
        assert (tmp_path / "px" / part).is_dir(), part
    assert not (tmp_path / "px" / "model_index.json").exists()
    reloaded = DiffusionPolicy(pretrained=str(tmp_path / "px"))
    reloaded.build()
    assert reloaded.is_sdxl and reloaded.vae is None
    gen = torch.Generator().manual_seed(SEED)
    after = sample_images(reloaded, CAPTIONS, gen, num_steps=STEPS, guidance_scale=CFG)
    torch.testing.assert_close(after, before, **TOL)
