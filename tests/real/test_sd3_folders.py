"""The real SD3 Medium and SD3.5 Large / Medium folders load into ``FlowPolicy``.

Stand-in weights (:mod:`sd_folders`: the real configs with small widths and depths, the real CLIP
and T5 tokenizers, scheduler and model_index); SD3.5 Large's folder has no tokenizers (the same
blobs as SD3 Medium's, which it takes here) and SD3.5 Medium is the SD3 folder with the
reconstructed transformer config (``dual_attention_layers``, ``qk_norm``). The full-size
transformers are built on the meta device for their sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel
from sd_folders import SD3, SD35L, T5_WIDTH, one_dpo_step, random_weights_folder

from lightning_pref.models import FlowPolicy

RECONSTRUCTED = "sd35m_transformer_config_RECONSTRUCTED.json"


def _sd3_source(realfiles: Path, name: str, tmp: Path) -> Path:
    """The real folder; SD3.5 Large with SD3's tokenizers, SD3.5 Medium = SD3 + its transformer."""
    configs = realfiles / "sd_configs"
    if name == SD3:
        return configs / SD3
    if name == SD35L:
        folder = shutil.copytree(configs / SD35L, tmp / "sd35l-source")
        for sub in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            shutil.copytree(configs / SD3 / sub, folder / sub)
        return folder
    folder = shutil.copytree(configs / SD3, tmp / "sd35m-source")
    shutil.copy(configs / "variants" / RECONSTRUCTED, folder / "transformer" / "config.json")
    return folder


@pytest.fixture(scope="module")
def folders(realfiles, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd3")
    return {
        name: random_weights_folder(_sd3_source(realfiles, name, root), root / name)
        for name in (SD3, SD35L, "sd35m")
    }


@pytest.mark.parametrize("name", [SD3, SD35L, "sd35m"])
def test_real_sd3_folder_settings(folders, name):
    """Shift 3 (σ at t=499 is 0.75), the 16-channel VAE's scaling 1.5305 / shift 0.0609 and its
    force_upcast (float32 under frozen_dtype float16), T5 present, and the packed conditioning
    [B, 77 + 256 + 1, J] with the real tokenizers (T5 ids of "a photo of a cat":
    3 9 1202 13 3 9 1712 and </s> = 1)."""
    policy = FlowPolicy(pretrained=str(folders[name]), frozen_dtype="float16")
    policy.build()
    assert policy.noise_scheduler.config.shift == 3.0
    assert policy.sigmas[499].item() == pytest.approx(0.75, abs=1e-6)
    assert policy.vae.config.scaling_factor == pytest.approx(1.5305)
    assert policy.vae.config.shift_factor == pytest.approx(0.0609)
    assert policy.vae.dtype == torch.float32 and policy.text_encoder_3.dtype == torch.float16
    assert policy.unet.dtype == torch.float32
    ids = policy.tokenizer_3("a photo of a cat").input_ids
    assert ids == [3, 9, 1202, 13, 3, 9, 1712, 1]
    embeds = policy.encode_prompt(["a photo of a cat", ""])
    assert embeds.shape == (2, 77 + 256 + 1, T5_WIDTH) and embeds.dtype == torch.float32
    latents = policy.encode_images(torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert latents.shape == (2, 16, 8, 8)
    assert policy(latents, torch.tensor([10, 900]), embeds).shape == latents.shape
    if name == "sd35m":
        assert list(policy.unet.config.dual_attention_layers) == [0]
        assert policy.unet.config.qk_norm == "rms_norm"


def test_one_lora_dpo_step_on_the_real_sd3_layout(folders):
    """One flow-DPO step (LoRA on flow_grpo's eight attention projections) runs and reaches
    every adapter of the real SD3 layout."""
    module = one_dpo_step(FlowPolicy(pretrained=str(folders[SD3]), lora_rank=4, lora_alpha=8))
    names = [n for n, p in module.policy.unet.named_parameters() if p.requires_grad]
    # the one stand-in layer is SD3's last, context_pre_only: no to_add_out, 7 targets x (A, B)
    assert len(names) == 7 * 2
    assert all(p.grad is not None for p in module.policy.unet.parameters() if p.requires_grad)


# full-size transformers (meta device): parameters counted from the configs (published: "2B",
# "8.1B", "2.5B"; SD3.5 Medium's 2.5B counts more than its MMDiT-X transformer)
FULL = {SD3: 2_028_328_000, SD35L: 8_056_627_520, "sd35m": 2_243_171_520}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_transformers_on_meta(realfiles, tmp_path, name):
    """Each real transformer config builds at full size with its parameter count."""
    source = _sd3_source(realfiles, name, tmp_path)
    config = json.loads((source / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(config)
    count = sum(p.numel() for p in transformer.parameters())
    assert count == FULL[name]
