"""SDXL backbone: packed conditioning, UNet call, encode_prompt, loading, 2-step DPO/SPO runs."""

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from torch.testing import assert_close

from lightning_pref.__main__ import main
from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models import (
    DiffusionPolicy,
    TinyDiffusionPolicy,
    build_tiny_sdxl_components,
    load_components,
    pack_sdxl_conditioning,
    save_tiny_clip,
    save_tiny_sdxl_pipeline,
    save_tiny_vae,
    unpack_sdxl_conditioning,
)
from lightning_pref.models.sampling import sample_images
from lightning_pref.runs import load_module

ROOT = Path(__file__).parents[2]
CAPTIONS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "sdxl", seed=2)


@pytest.fixture
def sdxl_policy() -> TinyDiffusionPolicy:
    policy = TinyDiffusionPolicy(sample_size=8, seed=0, sdxl=True)
    policy.build()
    return policy


def _pipeline(policy: DiffusionPolicy, force_zeros: bool) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        text_encoder_2=policy.text_encoder_2,
        tokenizer=policy.tokenizer,
        tokenizer_2=policy.tokenizer_2,
        unet=policy.unet,
        scheduler=EulerDiscreteScheduler.from_config(policy.noise_scheduler.config),
        force_zeros_for_empty_prompt=force_zeros,
    )


# ------------------------------------------------------------------ packing
def test_pack_round_trips_and_pads_the_pooled_row():
    """hidden [2, 3, 4] + pooled [2, 3] → [2, 4, 4]: rows 0-2 = hidden, row 3 = (p0, p1, p2, 0)."""
    hidden = torch.arange(24.0).view(2, 3, 4)
    pooled = torch.tensor([[100.0, 101.0, 102.0], [200.0, 201.0, 202.0]])
    packed = pack_sdxl_conditioning(hidden, pooled)
    assert packed.shape == (2, 4, 4)
    assert torch.equal(packed[:, 3], torch.tensor([[100.0, 101, 102, 0], [200, 201, 202, 0]]))
    h, p = unpack_sdxl_conditioning(packed, 3)
    assert torch.equal(h, hidden) and torch.equal(p, pooled)
    # what the rest of the package does to prompt_embeds keeps the pairing: CFG concat, repeat
    both = torch.cat([packed, packed.flip(0)]).repeat(2, 1, 1)  # [8, 4, 4]
    h8, p8 = unpack_sdxl_conditioning(both, 3)
    assert torch.equal(p8[1], pooled[1]) and torch.equal(p8[2], pooled[1])
    assert torch.equal(h8[7], hidden[0])
    with pytest.raises(ValueError, match="pooled width 5 > text width 4"):
        pack_sdxl_conditioning(hidden, torch.zeros(2, 5))


# ------------------------------------------------------------------ UNet call
def test_forward_is_the_diffusers_unet_with_added_cond_kwargs(sdxl_policy):
    """8 latent px x VAE factor 2 = 16 px images, so time_ids = (16, 16, 0, 0, 16, 16)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    embeds = sdxl_policy.encode_prompt(CAPTIONS)  # [2, 17, 16]
    assert embeds.shape == (2, 16 + 1, 16) and sdxl_policy.pooled_dim == 8
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)
    added = {"text_embeds": embeds[:, -1, :8], "time_ids": time_ids}
    with torch.no_grad():
        expected = sdxl_policy.unet(
            x, t, encoder_hidden_states=embeds[:, :16], added_cond_kwargs=added
        ).sample
        got = sdxl_policy(x, t, embeds)
        # a frozen copy (the "copy" reference) goes through the same unpacking
        ref = sdxl_policy.unet_forward(copy.deepcopy(sdxl_policy.unet), x, t, embeds)
        other_size = {**added, "time_ids": time_ids * 2}
        moved = sdxl_policy.unet(
            x, t, encoder_hidden_states=embeds[:, :16], added_cond_kwargs=other_size
        ).sample
    assert torch.equal(sdxl_policy.add_time_ids(x), time_ids)
    assert_close(got, expected, rtol=0, atol=0)
    assert_close(ref, expected, rtol=0, atol=0)
    assert (moved - expected).abs().max() > 1e-4  # the size ids do reach the output


def test_lora_reference_is_the_base_sdxl_unet():
    policy = TinyDiffusionPolicy(sample_size=8, seed=0, sdxl=True, lora_rank=4)
    policy.build()
    base = TinyDiffusionPolicy(sample_size=8, seed=0, sdxl=True)
    base.build()
    with torch.no_grad():
        for name, param in policy.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
        embeds = policy.encode_prompt(CAPTIONS)
        with policy.adapters_disabled():
            off = policy(x, t, embeds)
        on = policy(x, t, embeds)
        assert_close(off, base(x, t, embeds), rtol=0, atol=1e-6)
    assert (on - off).abs().max() > 1e-4


# ------------------------------------------------------------------ encode_prompt
def test_encode_prompt_matches_the_sdxl_pipeline(sdxl_policy):
    pipe = _pipeline(sdxl_policy, force_zeros=True)
    pe, npe, pooled, npooled = pipe.encode_prompt(
        CAPTIONS, device=torch.device("cpu"), num_images_per_prompt=1
    )
    packed = sdxl_policy.encode_prompt(CAPTIONS)
    assert_close(packed[:, :-1], pe, rtol=0, atol=0)
    assert_close(packed[:, -1, :8], pooled, rtol=0, atol=0)
    assert torch.equal(packed[:, -1, 8:], torch.zeros(2, 8))
    # force_zeros_for_empty_prompt: the pipeline's negative embeddings are zeros, and so is ""
    empty = sdxl_policy.encode_prompt(["", "a cat", ""])
    assert torch.equal(empty[[0, 2]], pack_sdxl_conditioning(npe, npooled))
    assert torch.equal(empty[[0, 2]], torch.zeros(2, 17, 16))
    assert empty[1].abs().sum() > 0


def test_encode_empty_prompt_without_force_zeros_matches_the_pipeline(sdxl_dir):
    policy = DiffusionPolicy(pretrained=str(sdxl_dir), force_zeros_for_empty_prompt=False)
    policy.build()
    pipe = _pipeline(policy, force_zeros=False)
    _, npe, _, npooled = pipe.encode_prompt(
        CAPTIONS, device=torch.device("cpu"), negative_prompt=["", ""]
    )
    empty = policy.encode_prompt(["", ""])
    assert_close(empty, pack_sdxl_conditioning(npe, npooled), rtol=0, atol=0)
    assert empty.abs().sum() > 0


# ------------------------------------------------------------------ loading
def test_sdxl_folder_loads_in_the_real_layout(sdxl_dir):
    index = json.loads((sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    parts = load_components(str(sdxl_dir))
    assert parts.text_encoder_2 is not None and parts.tokenizer_2 is not None
    assert parts.force_zeros_for_empty_prompt is True
    # Euler saves no clip_sample; DDPMScheduler's default (True) would clamp latent x0 to [-1, 1]
    assert parts.noise_scheduler.config.clip_sample is False
    policy = DiffusionPolicy(pretrained=str(sdxl_dir))
    policy.build()
    assert policy.is_sdxl and policy.zero_empty_prompt and policy.vae_scale_factor == 2
    fresh = build_tiny_sdxl_components(seed=2)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        want = getattr(fresh, name).state_dict()
        got = getattr(policy, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert not any(p.requires_grad for p in policy.text_encoder_2.parameters())
    assert not policy.text_encoder_2.training


def test_vae_path_replaces_the_folder_vae(sdxl_dir, tmp_path):
    other = save_tiny_vae(tmp_path / "vae_fix", sample_size=8, seed=5)
    assert (other / "config.json").is_file()  # the madebyollin/sdxl-vae-fp16-fix layout
    policy = DiffusionPolicy(pretrained=str(sdxl_dir), vae_path=str(other))
    policy.build()
    plain = load_components(str(sdxl_dir)).vae.state_dict()
    swapped = policy.vae.state_dict()
    assert any(not torch.equal(plain[k], swapped[k]) for k in plain)
    from diffusers import AutoencoderKL

    saved = AutoencoderKL.from_pretrained(str(other)).state_dict()
    assert all(torch.equal(saved[k], swapped[k]) for k in saved)
    # a pipeline folder works too (its vae/ subfolder)
    policy = DiffusionPolicy(pretrained=str(sdxl_dir), vae_path=str(sdxl_dir))
    policy.build()
    assert all(torch.equal(plain[k], policy.vae.state_dict()[k]) for k in plain)


def test_vae_path_errors_are_one_line(sdxl_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="VAE folder '.*nope' does not exist"):
        DiffusionPolicy(pretrained=str(sdxl_dir), vae_path=str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        DiffusionPolicy(pretrained=str(sdxl_dir), vae_path="madebyollin/sdxl-vae-fp16-fix")
    assert "\n" not in str(err.value)
    assert "--model.init_args.policy.init_args.vae_path DIR" in str(err.value)


class _RefinerLike(TinyDiffusionPolicy):
    """SDXL with the refiner's 5 size/aesthetic ids (5 * 4 + 8 = 28 projection inputs)."""

    def _load_components(self):
        parts = build_tiny_sdxl_components()
        config = {**parts.unet.config, "projection_class_embeddings_input_dim": 28}
        parts.unet = UNet2DConditionModel.from_config(config)
        return parts


class _TextOnly(TinyDiffusionPolicy):
    def _load_components(self):
        parts = build_tiny_sdxl_components()
        parts.text_encoder_2 = None
        return parts


def test_unsupported_added_conditioning_is_a_config_error():
    with pytest.raises(ConfigError, match="takes 5 size/crop ids"):
        _RefinerLike().build()
    with pytest.raises(ConfigError, match="'text_time' without text_encoder_2/"):
        _TextOnly().build()


# ------------------------------------------------------------------ sampling
def test_cfg_sampling_uses_zero_uncond(sdxl_policy):
    """CFG 5 with the zero unconditional embedding: images differ from no guidance."""
    guided = sample_images(sdxl_policy, CAPTIONS, torch.Generator().manual_seed(0), num_steps=2)
    plain = sample_images(
        sdxl_policy, CAPTIONS, torch.Generator().manual_seed(0), num_steps=2, guidance_scale=1.0
    )
    assert guided.shape == (2, 3, 16, 16) and guided.abs().max() <= 1
    assert (guided - plain).abs().max() > 1e-4


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
    ("tiny_dpo_sdxl.yaml", True),
    ("tiny_dpo_sdxl.yaml", False),
    ("tiny_spo_sdxl.yaml", True),
    ("tiny_spo_sdxl.yaml", False),
]


@pytest.mark.parametrize(
    ("config", "lora"), RUNS, ids=["dpo-lora", "dpo-full", "spo-lora", "spo-full"]
)
def test_two_steps_train_and_change_samples(config, lora, sdxl_dir, tmp_path, fit_tiny):
    version = _fit(fit_tiny, config, sdxl_dir, tmp_path, lora)
    ckpt = version / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 2
    assert all(("lora_" in k) == lora for k in saved["state_dict"])
    tuned = load_module(version / "config.yaml", ckpt)
    base = load_module(version / "config.yaml")
    assert tuned.policy.is_sdxl and base.policy.is_sdxl
    base_state = base.state_dict()
    changed = [k for k, v in saved["state_dict"].items() if not torch.equal(v, base_state[k])]
    assert changed, "no parameter moved in 2 steps"
    images = [
        sample_images(m.policy, CAPTIONS, torch.Generator().manual_seed(0), num_steps=2)
        for m in (base, tuned)
    ]
    assert images[0].shape == images[1].shape == (2, 3, 16, 16)
    assert (images[0] - images[1]).abs().max() > 1e-5


def test_evaluate_cli_on_a_trained_sdxl_run(sdxl_dir, tmp_path, monkeypatch, fit_tiny):
    version = _fit(fit_tiny, "tiny_dpo_sdxl.yaml", sdxl_dir, tmp_path / "runs", True)
    clip = save_tiny_clip(tmp_path / "clip")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    scorer = {"class_path": "lightning_pref.scoring.PretrainedPickScore"}
    scorer["init_args"] = {"pretrained": str(clip), "processor_path": str(clip)}
    out = tmp_path / "eval"
    main(
        ["evaluate", "--run", str(version), "--out", str(out)]
        + ["--prompts", str(tmp_path / "prompts.txt"), "--scorers", json.dumps({"pick": scorer})]
        + ["--gold", "pick", "--num_samples", "2", "--num_steps", "2", "--batch_size", "2"]
        + ["--diversity_samples", "0", "--implicit_draws", "1"]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 2 and set(report["scores"]) == {"pick"}
    assert report["wins"] + report["ties"] + report["losses"] == 2
    assert 0.0 <= report["implicit_acc"] <= 1.0  # DPO's val pairs through the SDXL forward


def test_shipped_spo_sdxl_config_trains_on_the_tiny_folder(sdxl_dir, tmp_path, monkeypatch):
    """experiments/spo_sdxl.yaml as shipped (LoRA r64, k=2, adapters-off reference), CPU-sized."""
    clip = save_tiny_clip(tmp_path / "clip")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    monkeypatch.chdir(tmp_path)
    pool = "--model.init_args.pool.init_args."
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        main(
            ["fit", "--config", str(ROOT / "experiments" / "spo_sdxl.yaml")]
            + ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
            + ["--trainer.max_steps=2", "--trainer.enable_progress_bar=false"]
            + [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
            + [f"--model.init_args.policy.init_args.pretrained={sdxl_dir}"]
            + [f"--model.init_args.policy.init_args.vae_path={sdxl_dir}"]
            + [f"{pool}scorer.init_args.pretrained={clip}", f"{pool}num_steps=4"]
            + [f"{pool}scorer.init_args.processor_path={clip}", f"{pool}threshold=0.0"]
            + [f"--data.init_args.train_prompts={prompts}", "--model.init_args.train_batch_size=2"]
        )
    ckpt = next((tmp_path / "runs" / "spo_sdxl").rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 2 and all("lora" in key for key in state["state_dict"])
    assert any(v.abs().sum() > 0 for k, v in state["state_dict"].items() if "lora_B" in k)
