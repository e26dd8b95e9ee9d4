"""The real FLUX.1-dev and FLUX.1-schnell folders load into ``FluxPolicy``.

Stand-in weights (:mod:`sd_folders`) with the real CLIP and T5 tokenizers, scheduler and
model_index; schnell is the dev folder with its own transformer and scheduler configs swapped
in (the real files' README). The full-size transformers are built on the meta device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from sd_folders import (
    FLUX_DEV,
    FLUX_SCHNELL,
    T5_WIDTH,
    TEXT_WIDTH,
    one_dpo_step,
    random_weights_folder,
)

from lightning_pref.models import FluxPolicy


def _source(realfiles: Path, name: str, tmp: Path) -> Path:
    configs = realfiles / "sd_configs"
    if name == FLUX_DEV:
        return configs / FLUX_DEV
    folder = shutil.copytree(configs / FLUX_DEV, tmp / "schnell-source")
    for sub in ("transformer", "scheduler"):
        for file in (configs / FLUX_SCHNELL / sub).iterdir():
            shutil.copy(file, folder / sub / file.name)
    return folder


@pytest.fixture(scope="module")
def folders(realfiles, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux")
    return {
        n: random_weights_folder(_source(realfiles, n, root), root / n)
        for n in (FLUX_DEV, FLUX_SCHNELL)
    }


@pytest.mark.parametrize("name", [FLUX_DEV, FLUX_SCHNELL])
def test_real_flux_folder_settings(folders, name):
    """dev: guidance embedding, resolution-dependent shift (unshifted training table, σ(499) =
    0.5); schnell: no guidance embedding, shift 1. Both: VAE scaling 0.3611 / shift 0.1159 kept
    float32 under frozen_dtype float16 (force_upcast), T5 ids of the real tokenizer, the
    conditioning [B, 512 + 1, J], and 2x2-packed latents through the transformer."""
    policy = FluxPolicy(pretrained=str(folders[name]), frozen_dtype="float16", sample_size=8)
    policy.build()
    dev = name == FLUX_DEV
    assert policy.unet.config.guidance_embeds is dev
    assert policy.noise_scheduler.config.use_dynamic_shifting is dev
    assert policy.sigmas[499].item() == pytest.approx(0.5)
    assert policy.vae.config.scaling_factor == pytest.approx(0.3611)
    assert policy.vae.config.shift_factor == pytest.approx(0.1159)
    assert policy.vae.dtype == torch.float32 and policy.text_encoder_2.dtype == torch.float16
    assert policy.tokenizer_2("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]
    embeds = policy.encode_prompt(["a photo of a cat", ""])
    assert embeds.shape == (2, 513, T5_WIDTH) and TEXT_WIDTH <= T5_WIDTH
    latents = policy.encode_images(torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert latents.shape == (2, 16, 8, 8)
    assert policy(latents, torch.tensor([10, 900]), embeds).shape == latents.shape


def test_one_lora_dpo_step_on_the_real_flux_layout(folders):
    module = one_dpo_step(FluxPolicy(pretrained=str(folders[FLUX_DEV]), lora_rank=4, sample_size=8))
    adapters = [p for p in module.policy.unet.parameters() if p.requires_grad]
    assert adapters and all(p.grad is not None for p in adapters)


FULL = {FLUX_DEV: 11_901_408_320, FLUX_SCHNELL: 11_891_178_560}  # schnell: no guidance MLP


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_flux_on_meta(realfiles, tmp_path, name):
    """FLUX.1 [dev] and [schnell]: "12B" transformers; dev's guidance embedding adds its MLP."""
    config = json.loads(
        (_source(realfiles, name, tmp_path) / "transformer" / "config.json").read_text()
    )
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
    assert sum(p.numel() for p in transformer.parameters()) == FULL[name]
