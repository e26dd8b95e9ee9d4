"""The real SD1.5, SD2.1 and SDXL folders of ``sd_configs/`` load into ``DiffusionPolicy``.

Stand-in weights (:mod:`sd_folders`: the real configs with small widths and depths, the real
tokenizers, scheduler and model_index) for the loading logic; the full-size configs on the meta
device for the sizes. The 2-step training run on the real SD1.5 architecture is in
``test_sd15_train_export.py`` (slow).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from sd_folders import SD15, SD21, SDXL, random_weights_folder
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from lightning_pref.errors import ConfigError
from lightning_pref.models import DiffusionPolicy
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.loading import vae_dtype
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.types import ImagePairBatch

# folder -> (prediction type, VAE scaling factor, zeros for "", SDXL, VAE force_upcast in the file)
EXPECTED = {
    SD15: ("epsilon", 0.18215, False, False, False),  # no scaling_factor: diffusers' default
    SD21: ("v_prediction", 0.18215, False, False, False),
    SDXL: ("epsilon", 0.13025, True, True, True),
}


@pytest.fixture(scope="module")
def folders(realfiles: Path, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Stand-in folders of each model: fp32, and fp16 holding exactly the same values."""
    root = tmp_path_factory.mktemp("sd")
    made = {}
    for name in EXPECTED:
        source = realfiles / "sd_configs" / name
        for dtype, tag in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            made[name, tag] = random_weights_folder(
                source, root / f"{name}-{tag}", dtype=dtype, values=torch.float16
            )
    return made


def _policy(folder: Path, **kwargs) -> DiffusionPolicy:
    policy = DiffusionPolicy(pretrained=str(folder), **kwargs)
    policy.build()
    return policy


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_folder_settings(folders, name):
    """Prediction type from the scheduler config (SD2.1: v-prediction), the VAE scaling factor
    (SD1.5/2.1 configs lack it: 0.18215; SDXL 0.13025), SDXL's force_zeros_for_empty_prompt and
    force_upcast, and the real tokenizers' 77-token ids."""
    prediction, scale, zeros, sdxl, upcast = EXPECTED[name]
    policy = _policy(folders[name, "fp16"])
    assert policy.prediction_type == prediction
    assert policy.vae.config.scaling_factor == pytest.approx(scale)
    assert policy.zero_empty_prompt is zeros
    assert policy.is_sdxl is sdxl
    assert vae_dtype(policy.vae, torch.float16) == (torch.float32 if upcast else torch.float16)
    ids = policy._token_ids(policy.tokenizer, ["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids.shape == (1, 77)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fp16_folder_loads_fp32_masters_and_frozen_dtype(folders, name):
    """Whatever the files hold, the UNet is float32; the VAE and text encoders take
    frozen_dtype (default float32); a force_upcast VAE (SDXL) stays float32 under float16; the
    encodings come out in the UNet's dtype, and the UNet runs on them."""
    default = _policy(folders[name, "fp16"])
    frozen = [default.vae, default.text_encoder, default.text_encoder_2]
    assert default.unet.dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in frozen if m is not None)
    half = _policy(folders[name, "fp32"], frozen_dtype="float16")
    assert half.unet.dtype == torch.float32
    assert half.text_encoder.dtype == torch.float16
    assert half.vae.dtype == (torch.float32 if EXPECTED[name][4] else torch.float16)
    embeds = half.encode_prompt(["a red circle", ""])
    latents = half.encode_images(torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert embeds.dtype == latents.dtype == torch.float32
    out = half(latents, torch.tensor([10, 500]), embeds)
    assert out.shape == latents.shape and out.dtype == torch.float32
    assert half.decode_latents(latents).dtype == torch.float32


def _dpo_step(folder: Path) -> tuple[float, dict[str, torch.Tensor]]:
    module = OfflinePairModule(
        DiffusionPolicy(pretrained=str(folder), lora_rank=4),
        DiffusionDPO(beta=5000.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        reference="adapters_off",
        seed=0,
    )
    torch.manual_seed(0)  # LoRA's gaussian initialisation
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    batch = ImagePairBatch(
        pixels_w=torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
        pixels_l=torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
        captions=["a red circle", "a photo of a cat"],
        pref_prob=torch.ones(2),
    )
    loss = module.shared_step(batch, "train", 0).loss
    loss.backward()
    grads = {k: p.grad.clone() for k, p in module.policy.unet.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("name", [SD15, SDXL])
def test_fp16_and_fp32_folders_train_alike(folders, name):
    """One DPO step (LoRA, reference = adapters off, precision 32) from the fp16 folder and from
    the fp32 folder holding the same values gives the same loss and LoRA gradients (the fp16
    folder used to fail with "c10::Half != float")."""
    loss_16, grads_16 = _dpo_step(folders[name, "fp16"])
    loss_32, grads_32 = _dpo_step(folders[name, "fp32"])
    assert loss_16 == loss_32
    assert grads_16.keys() == grads_32.keys() and len(grads_16) > 0
    assert all(torch.equal(grads_16[k], grads_32[k]) for k in grads_16)
    assert any(g.abs().sum() > 0 for g in grads_16.values())


def test_variant_fp16_files(realfiles, tmp_path):
    """``variant="fp16"`` reads ``*.fp16.safetensors`` (what most users download)."""
    folder = random_weights_folder(
        realfiles / "sd_configs" / SD15, tmp_path / "sd15", dtype=torch.float16, variant="fp16"
    )
    policy = _policy(folder, variant="fp16")
    assert policy.unet.dtype == policy.text_encoder.dtype == torch.float32


def test_resaved_and_variant_configs_load(folders, realfiles, tmp_path):
    """The UNet config re-saved by diffusers 0.17 (about 25 more keys), the VAE config with an
    explicit scaling_factor and SD2.1's older model_index (CLIPFeatureExtractor) all load."""
    variants = realfiles / "sd_configs" / "variants"
    sd15 = shutil.copytree(folders[SD15, "fp32"], tmp_path / "sd15")
    resaved = json.loads(
        (variants / "sd15_unet_config_diffusers0.17_resave_2e7465d.json").read_text()
    )
    ours = json.loads((sd15 / "unet" / "config.json").read_text())
    extra = sorted(set(resaved) - set(ours))
    assert len(extra) >= 20, extra
    sizes = {
        k: ours[k] for k in ("block_out_channels", "attention_head_dim", "cross_attention_dim")
    }
    sizes["norm_num_groups"] = ours["norm_num_groups"]
    sizes["layers_per_block"] = ours["layers_per_block"]
    (sd15 / "unet" / "config.json").write_text(json.dumps({**resaved, **sizes}))
    vae = json.loads((variants / "sd15_vae_config_with_scaling_factor_c448ce0.json").read_text())
    ours_vae = json.loads((sd15 / "vae" / "config.json").read_text())
    vae_sizes = {k: ours_vae[k] for k in ("block_out_channels", "layers_per_block")}
    (sd15 / "vae" / "config.json").write_text(json.dumps({**vae, **vae_sizes}))
    policy = _policy(sd15)
    assert policy.vae.config.scaling_factor == 0.18215
    assert policy.prediction_type == "epsilon"
    sd21 = shutil.copytree(folders[SD21, "fp32"], tmp_path / "sd21")
    shutil.copy(
        variants / "sd21_model_index_CLIPFeatureExtractor_2023-02.json", sd21 / "model_index.json"
    )
    assert _policy(sd21).prediction_type == "v_prediction"


def test_bad_frozen_dtype_is_one_line():
    with pytest.raises(ConfigError, match="frozen_dtype"):
        DiffusionPolicy(pretrained="x", frozen_dtype="int8", check_source=False)


# the full-size UNets: parameters (the published counts) and SDXL's pooled width
FULL = {SD15: 859_520_964, SD21: 865_910_724, SDXL: 2_567_463_684}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_configs_on_meta(realfiles, name):
    """Each real UNet config builds at full size on the meta device with the published
    parameter count; SDXL's real text_encoder_2 gives the pooled width 1280 and the 6 size ids
    that DiffusionPolicy checks (2816 = 1280 + 6 x 256)."""
    folder = realfiles / "sd_configs" / name
    config = UNet2DConditionModel.load_config(folder / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        text_2 = None
        if (folder / "text_encoder_2").is_dir():
            text_2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            )
    assert sum(p.numel() for p in unet.parameters()) == FULL[name]
    policy = DiffusionPolicy(pretrained=str(folder), check_source=False)
    parts = DiffusionComponents(
        unet=unet, noise_scheduler=None, text_encoder=None, tokenizer=None, text_encoder_2=text_2
    )
    assert policy._sdxl_pooled_dim(parts) == (1280 if name == SDXL else None)
