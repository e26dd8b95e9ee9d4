"""Negative-model guidance (Diffusion-NPO, Self-NPO): a second UNet for CFG's unconditional branch.

Diffusion-NPO (METHODS §11.1, official ``gen.py`` and the double-UNet pipelines) samples with

    ε = ε_neg(x_t, "") + w · (ε_pos(x_t, c) - ε_neg(x_t, ""))

where the negative weights are built in weight space from three models with the same
architecture: the base θ_base, the positive model θ_pos (base, or a DPO-tuned model) and the NPO
model θ_npo trained *from the base* (δ = θ_npo - θ_base)::

    θ_neg = θ_base + δ + (1 - m)·(θ_pos - θ_base) = θ_pos + δ - m·(θ_pos - θ_base)

with ``m = --merge_weight`` (official default 0, so θ_neg = θ_pos + δ). The README calls m "the
beta in the paper", whose formula is θ_neg = θ + α·η + β·δ; in the code m scales η = θ_pos -
θ_base as α = 1 - m and δ enters at scale 1, which we follow. LoRA adapters are folded into the
weights first (:func:`merged_unet`), so any mix of LoRA and full models works.

Typical use (base+NPO, or DPO+NPO with ``positive`` the DPO policy)::

    guidance = NegativeGuidance.from_policies(positive, base=npo_base, negative=npo)
    images = sample_images(positive, captions, generator, uncond_denoiser=guidance)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_pref.errors import ConfigError
from lightning_pref.models.policy import DiffusionPolicy

__all__ = ["NegativeGuidance", "merged_unet", "negative_state_dict"]


def merged_unet(unet: nn.Module) -> nn.Module:
    """A frozen copy of ``unet`` with every LoRA adapter folded into its weights (a plain UNet).

    A UNet without adapters is simply copied. The original is not touched.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = copy.deepcopy(unet)
    for name, module in list(plain.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            owner = plain.get_submodule(parent) if parent else plain
            setattr(owner, child, module.get_base_layer())
    if getattr(plain, "_hf_peft_config_loaded", False):
        plain._hf_peft_config_loaded = False
        if hasattr(plain, "peft_config"):
            del plain.peft_config
    return plain.requires_grad_(False).eval()


def negative_state_dict(
    base: dict[str, Tensor],
    positive: dict[str, Tensor],
    negative: dict[str, Tensor],
    merge_weight: float = 0.0,
) -> dict[str, Tensor]:
    """``θ_neg = θ_pos + (θ_npo - θ_base) - m·(θ_pos - θ_base)`` key by key (plain weights).

    Written from θ_pos so that δ = 0 and m = 0 give θ_pos bit for bit.

    Raises:
        ConfigError: if the three state dicts do not have the same keys and shapes.
    """
    if not (base.keys() == positive.keys() == negative.keys()):
        diff = sorted(set(base) ^ set(positive) | set(base) ^ set(negative))
        raise ConfigError(f"base, positive and negative UNets differ in weights (e.g. '{diff[0]}')")
    out = {}
    for key, pos in positive.items():
        b, neg = base[key], negative[key]
        if not (b.shape == pos.shape == neg.shape):
            raise ConfigError(f"weight '{key}' has different shapes in base/positive/negative")
        if not pos.is_floating_point():
            out[key] = pos.clone()
            continue
        merged = pos.float() + (neg.float() - b.float())
        if merge_weight != 0.0:
            merged = merged - merge_weight * (pos.float() - b.float())
        out[key] = merged.to(pos.dtype)
    return out


class NegativeGuidance(nn.Module):
    """A negative UNet as a denoiser ``(x_t, t, embeds) -> prediction`` for ``uncond_denoiser``.

    Args:
        unet: the negative UNet (same architecture and conditioning as the positive policy's).
        forward_fn: how to run a UNet, normally the positive policy's ``unet_forward``.
    """

    def __init__(
        self, unet: nn.Module, forward_fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
    ) -> None:
        super().__init__()
        self.unet = unet.requires_grad_(False).eval()
        self._forward_fn = forward_fn

    @classmethod
    def from_policies(
        cls,
        positive: DiffusionPolicy,
        base: DiffusionPolicy,
        negative: DiffusionPolicy,
        merge_weight: float = 0.0,
    ) -> NegativeGuidance:
        """Build θ_neg (module docstring) from three built policies; none of them is modified.

        Args:
            positive: the model sampled in the conditional branch (base or DPO-tuned).
            base: the model the negative one was trained from (an NPO run without checkpoint).
            negative: the NPO (or Self-NPO) model.
            merge_weight: m of §11.1 (official default 0).
        """
        unet = merged_unet(positive.unet)
        with torch.no_grad():
            weights = negative_state_dict(
                merged_unet(base.unet).state_dict(),
                unet.state_dict(),
                merged_unet(negative.unet).state_dict(),
                merge_weight,
            )
            unet.load_state_dict(weights)
        return cls(unet, positive.unet_forward)

    def forward(self, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The negative UNet's prediction ``[N, C, h, w]``."""
        return self._forward_fn(self.unet, x_t, timesteps, prompt_embeds)
