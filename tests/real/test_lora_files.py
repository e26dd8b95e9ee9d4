"""Real SD1.5 LoRA files start a policy's LoRA, and our export writes the real files' key names.

The two files of ``weights/lora/``: diffusers' format (``unet.X.to_k.lora.down.weight``) and the
legacy attention-processor format (``P.processor.to_k_lora.down.weight``, no ``unet.``), both
rank 4 on to_q/k/v/out.0 of all 16 attention modules (attn1 and attn2): 256 tensors. The full
SD1.5 UNet is built from the real config on the meta device and given uninitialised CPU storage
(``to_empty``): no random initialisation of its 860M parameters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from sd_folders import SD15, random_weights_folder

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models import DiffusionPolicy
from lightning_pref.models.lora import load_lora_init, lora_state_dict, read_lora_file

NEW = "sd15_lora_new_format_brain-mri_pytorch_lora_weights.safetensors"
OLD = "sd15_lora_attnprocs_format_weapons_pytorch_lora_weights.safetensors"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def _unet(realfiles: Path, rank: int, alpha: float, targets=TARGETS) -> UNet2DConditionModel:
    config = UNet2DConditionModel.load_config(realfiles / "sd_configs" / SD15 / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to_empty(device="cpu")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    return unet


@pytest.mark.parametrize("name", [NEW, OLD])
def test_real_lora_file_starts_the_adapters(realfiles, name):
    """Each file's (down, up) become (lora_A, lora_B / (alpha / r)): with alpha 8 and rank 4 the
    adapter's update 2 * B @ A is the file's up @ down. The legacy names map to the same
    modules (``to_out_lora`` -> ``to_out.0``)."""
    path = realfiles / "weights" / "lora" / name
    unet = _unet(realfiles, rank=4, alpha=8)
    load_lora_init(unet, path)
    raw = load_file(str(path))
    adapters = get_peft_model_state_dict(unet)
    assert len(raw) == len(adapters) == 256
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    if name == NEW:
        down, up = (raw[f"unet.{module}.lora.{d}.weight"] for d in ("down", "up"))
    else:
        prefix = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
        down, up = raw[f"{prefix}.down.weight"], raw[f"{prefix}.up.weight"]
    a, b = adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"]
    assert torch.equal(a, down)
    torch.testing.assert_close(2.0 * b @ a, up @ down)
    assert up.abs().sum() > 0  # trained files: a nonzero update


@pytest.mark.parametrize("name", [NEW, OLD])
def test_export_of_a_loaded_file_gives_the_current_format(realfiles, tmp_path, name):
    """Our export of the adapters (``save_lora_weights`` adds ``unet.``) uses exactly the current
    file's 256 key names and shapes, and gives back each file's weights."""
    path = realfiles / "weights" / "lora" / name
    unet = _unet(realfiles, rank=4, alpha=4)
    load_lora_init(unet, path)
    exported = {f"unet.{k}": v for k, v in lora_state_dict(unet).items()}
    current = load_file(str(realfiles / "weights" / "lora" / NEW))
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in current.items()}
    file = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({k: v.contiguous() for k, v in exported.items()}, str(file))
    original, again = read_lora_file(path), read_lora_file(file)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_mismatched_files_are_one_line(realfiles, tmp_path):
    """Another rank, other targets, a broken file and text-encoder weights: one line each."""
    path = realfiles / "weights" / "lora" / NEW
    with pytest.raises(ModelLoadError, match="set lora_rank to the file's rank"):
        load_lora_init(_unet(realfiles, rank=8, alpha=8), path)
    with pytest.raises(ModelLoadError, match="256 extra|128 extra"):
        load_lora_init(_unet(realfiles, rank=4, alpha=4, targets=["to_k", "to_q"]), path)
    broken = realfiles / "edge_cases" / "empty_2byte_pytorch_lora_weights.safetensors"
    with pytest.raises(ModelLoadError, match="safetensors") as err:
        read_lora_file(broken)
    assert "\n" not in str(err.value)
    text = tmp_path / "te.safetensors"
    save_file({"text_encoder.x.lora.down.weight": torch.zeros(1, 1)}, str(text))
    with pytest.raises(ModelLoadError, match="text-encoder"):
        read_lora_file(text)
    with pytest.raises(ConfigError, match="lora_rank"):
        DiffusionPolicy(pretrained="x", lora_init=str(path), check_source=False)


def test_policy_lora_init_round_trip(realfiles, tmp_path):
    """``DiffusionPolicy(lora_init=...)`` on the real SD1.5 layout (stand-in sizes): a policy
    started from another's exported adapters (alpha 8, rank 4) has exactly its update."""
    folder = random_weights_folder(realfiles / "sd_configs" / SD15, tmp_path / "sd15")
    first = DiffusionPolicy(pretrained=str(folder), lora_rank=4, lora_alpha=8)
    first.build()
    with torch.no_grad():
        for name, param in first.unet.named_parameters():
            if "lora_B" in name:
                param.normal_()
    file = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({f"unet.{k}": v.contiguous() for k, v in lora_state_dict(first.unet).items()}, file)
    second = DiffusionPolicy(pretrained=str(folder), lora_rank=4, lora_alpha=2, lora_init=str(file))
    second.build()
    x = torch.randn(1, 4, 8, 8)
    embeds = second.encode_prompt(["a red circle"])
    t = torch.tensor([500])
    torch.testing.assert_close(second(x, t, embeds), first(x, t, embeds))
    with second.adapters_disabled():
        assert not torch.allclose(second(x, t, embeds), first(x, t, embeds))
    shutil.rmtree(folder)
