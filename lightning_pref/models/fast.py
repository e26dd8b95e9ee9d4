"""Training-speed options of a :class:`~lightning_pref.modules.PreferenceModule`, in one place.

Each option leaves the loss unchanged up to float rounding (the tests compare each against the
plain path on a tiny model); the defaults are the plain path. The other speed levers live where
they belong:

- mixed precision of the policy: the Trainer's ``precision`` (``bf16-mixed`` keeps fp32 master
  weights under autocast; ``bf16-true`` trains bf16 weights);
- fused AdamW: ``optimizer: {class_path: torch.optim.AdamW, init_args: {fused: true}}``;
- gradient checkpointing: ``DiffusionPolicy(gradient_checkpointing=True)`` (memory, not speed);
- the latent and text-embedding cache: ``python -m lightning_pref cache-latents`` and
  :class:`~lightning_pref.data.CachedPairDataModule`;
- winner and loser in one forward, and SDPA attention: always on (diffusers' default attention
  processor is ``AttnProcessor2_0``, i.e. ``scaled_dot_product_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lightning_pref.errors import ConfigError

__all__ = ["FastPath"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FastPath:
    """Speed options applied to the policy UNet and the frozen reference when they are built.

    Attributes:
        compile: ``torch.compile`` the policy and reference UNets in place (``nn.Module.compile``,
            so checkpoint keys do not change). The first steps are slow while it compiles.
        compile_mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
        compile_backend: ``torch.compile`` backend: ``inductor`` (generates kernels: the speed-up)
            or e.g. ``aot_eager`` (graph capture and AOTAutograd without code generation: compiles
            in seconds; for checking a model compiles).
        channels_last: store the UNets' weights channels-last (faster convolutions on GPUs with
            tensor cores; usually slower on CPU).
        reference_dtype: weights dtype of a ``copy`` reference (``bfloat16`` halves its memory and
            time); its inputs are cast to it and its output back. None keeps the policy's dtype.
        reference_inference_mode: run the reference under ``torch.inference_mode`` instead of
            ``no_grad`` (its output is cloned into a normal tensor for the loss).
    """

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    channels_last: bool = False
    reference_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    reference_inference_mode: bool = False

    def __post_init__(self) -> None:
        if self.reference_dtype is not None and self.reference_dtype not in _DTYPES:
            raise ConfigError(
                f"fast.reference_dtype must be one of {sorted(_DTYPES)}, "
                f"got {self.reference_dtype!r}"
            )

    @property
    def reference_torch_dtype(self) -> torch.dtype | None:
        """``reference_dtype`` as a ``torch.dtype``."""
        return None if self.reference_dtype is None else _DTYPES[self.reference_dtype]

    def apply_policy(self, unet: nn.Module) -> None:
        """Layout and compilation of the trainable UNet (in place)."""
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.compile:
            unet.compile(mode=self.compile_mode, backend=self.compile_backend)

    def apply_reference(self, unet: nn.Module | None, separate: bool) -> None:
        """Dtype, layout and compilation of the reference (in place).

        Args:
            unet: the frozen copy, or None when the reference is the policy without adapters.
            separate: whether the reference is its own copy (``reference='copy'``).
        """
        if not separate:
            if self.reference_dtype is not None:
                raise ConfigError(
                    "fast.reference_dtype needs reference='copy': with reference='adapters_off' "
                    "the reference is the policy's own UNet"
                )
            return
        assert unet is not None
        if self.reference_torch_dtype is not None:
            unet.to(self.reference_torch_dtype)
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.compile:
            unet.compile(mode=self.compile_mode, backend=self.compile_backend)
