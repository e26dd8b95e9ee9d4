"""LoRA files: the diffusers key names we export, and the files a policy's LoRA can start from.

A UNet LoRA file for Stable Diffusion comes in one of these key formats (``X`` is an attention
projection's module path such as ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k``):

- diffusers' format, which ``save_lora_weights`` writes and we export: ``unet.X.lora.down.weight``
  and ``unet.X.lora.up.weight``;
- the legacy attention-processor format (``unet.save_attn_procs``, diffusers < 0.21), with no
  ``unet.`` prefix: ``P.processor.to_k_lora.down.weight``, ...,
  ``P.processor.to_out_lora.up.weight`` where ``P`` is the attention module (``to_out_lora`` is
  ``to_out.0``);
- PEFT's: ``[unet.]X.lora_A.weight`` and ``X.lora_B.weight`` (``transformer.X...`` for the SD3
  and FLUX transformers, as their pipelines save them).

``down``/``lora_A`` is ``[r, in]``, ``up``/``lora_B`` ``[out, r]``; none of the three stores an
alpha, so a file means the update ``up @ down`` (scale 1), as ``pipe.load_lora_weights`` reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from lightning_pref.errors import ModelLoadError
from lightning_pref.models.files import check_weights_file

__all__ = ["load_lora_init", "lora_state_dict", "read_lora_file"]

_ATTN_PROCS = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_DIFFUSERS = re.compile(r"\.lora\.(down|up)\.weight$")
_PEFT = {"down": "lora_A", "up": "lora_B"}


def lora_state_dict(unet: nn.Module, peft_keys: bool = False) -> dict[str, Tensor]:
    """The UNet's LoRA weights in diffusers' format, the ``alpha/r`` scale folded into lora_B.

    Keys ``X.lora.down.weight``/``X.lora.up.weight`` (``save_lora_weights`` adds ``unet.``);
    with ``peft_keys`` PEFT's ``X.lora_A.weight``/``X.lora_B.weight``, which the SD3 and FLUX
    pipelines' ``save_lora_weights`` take for a transformer.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    state = dict(get_peft_model_state_dict(unet))  # "<module>.lora_A.weight", adapter name dropped
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            key = f"{name}.lora_B.weight"
            state[key] = state[key] * module.scaling["default"]
    return state if peft_keys else convert_state_dict_to_diffusers(state)


def _peft_key(key: str) -> str | None:
    """A file key in PEFT's naming (``X.lora_A.weight``), or None if it is not a UNet LoRA key."""
    key = key.removeprefix("unet.").removeprefix("transformer.")  # SD3/FLUX files: transformer.
    match = _ATTN_PROCS.search(key)
    if match:
        proj = "to_out.0" if match[1] == "to_out" else match[1]
        return f"{key[: match.start()]}.{proj}.{_PEFT[match[2]]}.weight"
    match = _DIFFUSERS.search(key)
    if match:
        return f"{key[: match.start()]}.{_PEFT[match[1]]}.weight"
    if key.endswith((".lora_A.weight", ".lora_B.weight")):
        return key
    return None


def read_lora_file(path: str | Path) -> dict[str, Tensor]:
    """A UNet LoRA safetensors file in any of the three formats, in PEFT's key names.

    Raises:
        ModelLoadError: a broken file, text-encoder LoRA keys, or keys that are not LoRA weights.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"LoRA file '{path}' does not exist")
    check_weights_file(path)
    state = {}
    for key, value in load_file(str(path)).items():
        if key.startswith(("text_encoder", "te_", "lora_te")):
            raise ModelLoadError(f"'{path}' holds text-encoder LoRA weights ({key}): UNet only")
        name = _peft_key(key)
        if name is None:
            raise ModelLoadError(f"'{path}' is not a diffusers UNet LoRA file: unknown key '{key}'")
        state[name] = value
    return state


def load_lora_init(unet: nn.Module, path: str | Path) -> None:
    """Start the UNet's ``default`` adapters from a LoRA file (:func:`read_lora_file`).

    The file's update ``up @ down`` is kept: lora_B is divided by the adapter's ``alpha / r``.
    Every adapter must get weights and every file tensor must find its adapter, with the same rank.

    Raises:
        ModelLoadError: one line naming the first mismatch.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    state = read_lora_file(path)
    expected = get_peft_model_state_dict(unet)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        which = f"no weights for {missing[0]}" if missing else f"no adapter for {unexpected[0]}"
        raise ModelLoadError(
            f"LoRA file '{path}' does not fit the policy's adapters ({len(missing)} without "
            f"weights, {len(unexpected)} extra; {which}): check lora_target_modules and the base"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelLoadError(
                f"LoRA file '{path}': {key} is {tuple(value.shape)}, the adapter "
                f"{tuple(expected[key].shape)}: set lora_rank to the file's rank"
            )
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            key = f"{name}.lora_B.weight"
            state[key] = state[key] / module.scaling["default"]
    dtype = next(iter(expected.values())).dtype
    set_peft_model_state_dict(unet, {k: v.to(dtype) for k, v in state.items()})
