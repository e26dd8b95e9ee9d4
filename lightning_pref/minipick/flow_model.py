"""MiniPick-Flow's model: MiniPick's UNet trained as a rectified flow (the flow path on a CPU).

The same 1.7M-parameter pixel-space UNet and word-level text encoder as the DDPM base
(:mod:`lightning_pref.minipick.model`), with the rectified-flow parameterisation of SD3 (Esser et
al. 2024) instead of DDPM's: ``x_t = (1 − σ) x0 + σ ε``, the UNet predicts the velocity ``ε − x0``
and is told ``1000 σ`` as its timestep, levels on a ``FlowMatchEulerDiscreteScheduler`` table.
Everything else comes from :class:`~lightning_pref.models.rectified.RectifiedFlow`, the code the
SD3 and FLUX policies use, so a MiniPick-Flow run exercises the flow objectives, noisings and
samplers that a real flow model uses.

Our choices (no paper fixes them at this scale): ``shift = 1`` (SD3 uses 3 at 1024 px; a 16×16 image
has little to shift for), logit-normal training levels (SD3's default, mean 0, std 1) for
pretraining and fine-tuning alike, and the base pretrained exactly as the DDPM base is (our
``fit`` with the ``SFT`` objective on rendered scenes, the same settings; see
:func:`~lightning_pref.minipick.build.pretrain_base`), sampled with the Euler ODE (10 steps, CFG 5)
where the DDPM world uses DDIM.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from lightning_pref.errors import ConfigError
from lightning_pref.minipick.model import build_minipick_components
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.rectified import RectifiedFlow

__all__ = [
    "FlowUNet",
    "MiniPickFlowFolderPolicy",
    "ScratchMiniPickFlowPolicy",
    "build_minipick_flow_components",
    "flow_scheduler",
    "load_minipick_flow_folder",
]

SAMPLINGS = ("uniform", "logit_normal", "mode")


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """MiniPick-Flow's scheduler: 1000 levels, ``shift = 1`` (module docstring)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_minipick_flow_components(
    image_size: int = 16, block_out_channels: tuple[int, ...] = (32, 64, 64), seed: int = 0
) -> DiffusionComponents:
    """A freshly initialised MiniPick-Flow model: the DDPM base's networks, the flow scheduler."""
    parts = build_minipick_components(image_size, block_out_channels, seed=seed)
    parts.noise_scheduler = flow_scheduler()
    return parts


def load_minipick_flow_folder(folder: str | Path) -> DiffusionComponents:
    """A saved MiniPick-Flow model: ``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``."""
    root = Path(folder)
    parts = ("unet", "scheduler", "text_encoder", "tokenizer")
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise ConfigError(f"'{root}' is not a MiniPick-Flow folder: no {missing[0]}/")
    config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    if config.get("_class_name") != FlowMatchEulerDiscreteScheduler.__name__:
        raise ConfigError(
            f"'{root}' holds a {config.get('_class_name')}, not MiniPick-Flow's "
            "FlowMatchEulerDiscreteScheduler: is it the DDPM base?"
        )
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
    return DiffusionComponents(
        UNet2DConditionModel.from_pretrained(root / "unet"),
        scheduler,
        CLIPTextModel.from_pretrained(root / "text_encoder"),
        PreTrainedTokenizerFast.from_pretrained(root / "tokenizer"),
        None,
    )


class FlowUNet(RectifiedFlow):
    """Mixin: the rectified flow on MiniPick's UNet (building, the velocity); before the policy."""

    def _init_flow(self, sampling: str, mean: float, std: float, scale: float) -> None:
        if sampling not in SAMPLINGS:
            raise ConfigError(f"unknown timestep_sampling '{sampling}' (one of {SAMPLINGS})")
        self.timestep_sampling = sampling
        self.logit_mean, self.logit_std, self.mode_scale = mean, std, scale

    def build(self) -> None:
        """Load the parts, freeze the text encoder, attach LoRA, register the sigmas."""
        if self._built:
            return
        parts = self._load_components()
        self.pooled_dim, self.zero_empty_prompt = None, False
        self.unet, self.vae = parts.unet, None
        self.text_encoder, self.tokenizer = parts.text_encoder, parts.tokenizer
        self.text_encoder_2 = self.tokenizer_2 = None
        self.noise_scheduler = parts.noise_scheduler
        self.text_encoder.requires_grad_(False).eval()
        if self.lora_rank is not None:
            self._add_lora()
        self._register_sigmas()
        self._built = True

    def load_base_unet(self) -> nn.Module:
        """A second, independent copy of the UNet as loaded (before LoRA)."""
        return self._load_components().unet

    def velocity(
        self, unet: nn.Module, x_t: Tensor, sigma: Tensor, prompt_embeds: Tensor, **_: object
    ) -> Tensor:
        """The velocity at noise levels ``sigma`` ``[N]`` in [0, 1] (the UNet is told 1000 σ)."""
        t = (sigma * self.num_train_timesteps).to(x_t.dtype).expand(x_t.shape[0])
        return unet(x_t, t, encoder_hidden_states=prompt_embeds).sample


class MiniPickFlowFolderPolicy(FlowUNet, DiffusionPolicy):
    """A MiniPick-Flow model saved in a folder (what the pair builder and tests load).

    Args:
        pretrained: the folder (``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``).
        timestep_sampling: see :class:`MiniPickFlowPolicy`.
    """

    def __init__(self, pretrained: str, timestep_sampling: str = "logit_normal") -> None:
        super().__init__(pretrained=pretrained, check_source=False)
        self._init_flow(timestep_sampling, 0.0, 1.0, 1.29)

    def _load_components(self) -> DiffusionComponents:
        return load_minipick_flow_folder(self.pretrained)


class ScratchMiniPickFlowPolicy(FlowUNet, DiffusionPolicy):
    """A freshly initialised MiniPick-Flow model (what pretraining starts from).

    Args:
        image_size: image side in pixels.
        seed: initialisation seed.
        unet_channels: the UNet's block widths.
        timestep_sampling: see :class:`MiniPickFlowPolicy`.
    """

    def __init__(
        self,
        image_size: int = 16,
        seed: int = 0,
        unet_channels: tuple[int, ...] = (32, 64, 64),
        timestep_sampling: str = "logit_normal",
    ) -> None:
        super().__init__(pretrained="<minipick-flow-scratch>", check_source=False)
        self.image_size, self.init_seed, self.unet_channels = image_size, seed, tuple(unet_channels)
        self._init_flow(timestep_sampling, 0.0, 1.0, 1.29)

    def _load_components(self) -> DiffusionComponents:
        return build_minipick_flow_components(self.image_size, self.unet_channels, self.init_seed)
