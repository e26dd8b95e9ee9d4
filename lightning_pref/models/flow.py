"""The rectified-flow policy: an SD3 / SD3.5 transformer with its three text encoders.

Rectified flow (Esser et al. 2024, SD3) noises ``x_t = (1 − σ) x0 + σ ε`` and regresses the
velocity ``ε − x0``. The training "timesteps" the modules pass around stay integers ``t`` in
``[0, 1000)``, ascending in noise: ``σ(t)`` is the scheduler's shifted sigma table read backwards,
so ``t`` is index ``999 − t`` of ``FlowMatchEulerDiscreteScheduler.sigmas`` (shift 3 for SD3:
``σ = 3s / (1 + 2s)`` with ``s = (t + 1) / 1000``), and the transformer is told ``1000 σ(t)``, as
the scheduler's own ``timesteps`` are. Timestep sampling follows diffusers'
``compute_density_for_timestep_sampling``: ``uniform`` over the 1000 levels, ``logit_normal``
(SD3's default; flow_grpo's ``train_sd3_dpo.py``: mean 0, std 1) or ``mode`` (scale 1.29): a draw
``u`` in (0, 1) picks the scheduler index ``⌊1000 u⌋``, that is ``t = 999 − ⌊1000 u⌋``.

Text conditioning is built as ``StableDiffusion3Pipeline.encode_prompt`` builds it (no clip skip):
the penultimate hidden states of CLIP-L (768) and CLIP-G (1280), concatenated, zero-padded to T5's
width and stacked above T5's 256 tokens (zeros without T5): ``[B, 77 + 256, 4096]``; the pooled
projections of both CLIPs ``[B, 2048]`` go in one extra row (:func:`pack_sdxl_conditioning`), so
the modules see one tensor as for the UNet policies. Latents are ``(z − shift_factor) ·
scaling_factor`` of the 16-channel VAE. Objectives and noisings that need a DDPM schedule
(ā_t: CaPO's weights, DDIM/ReNoise inversion, Self-NPO, DDIM sampling) refuse a flow policy in
one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_pref.errors import ConfigError
from lightning_pref.models.components import FlowComponents
from lightning_pref.models.conditioning import pack_sdxl_conditioning, unpack_sdxl_conditioning
from lightning_pref.models.loading import load_flow_components
from lightning_pref.models.policy import TORCH_DTYPES, DiffusionPolicy, FrozenDType
from lightning_pref.models.rectified import RectifiedFlow

__all__ = ["FlowPolicy", "SD3_LORA_TARGETS"]

# flow_grpo's SD3 LoRA targets (train_sd3_dpo.py): the joint attention's image and text projections
SD3_LORA_TARGETS = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
TimestepSampling = Literal["uniform", "logit_normal", "mode"]
T5_TOKENS = 256  # the SD3 pipeline's max_sequence_length


class FlowPolicy(RectifiedFlow, DiffusionPolicy):
    """An SD3 / SD3.5 rectified-flow transformer with its scheduler, text encoders and VAE.

    Noising, targets, levels and sampler sigmas come from
    :class:`~lightning_pref.models.rectified.RectifiedFlow`.

    The transformer sits where the UNet policies keep their UNet (``self.unet``: the trainable
    denoiser the modules, LoRA, references and checkpoints work on).

    Args:
        pretrained: a diffusers SD3 / SD3.5 folder (``transformer/``, ``scheduler/``, ``vae/``,
            ``text_encoder{,_2,_3}/``, ``tokenizer{,_2,_3}/``; T5 optional) or hub id.
        revision: hub revision.
        variant: weight variant, e.g. ``fp16``.
        lora_rank: train LoRA adapters of this rank; None = the full transformer.
        lora_alpha: LoRA alpha; None = ``lora_rank``.
        lora_target_modules: modules that get adapters (default: flow_grpo's SD3 list).
        gradient_checkpointing: trade compute for memory in the transformer.
        check_source: verify at construction that ``pretrained`` can be loaded.
        frozen_dtype: dtype of the VAE and text encoders (the transformer loads in float32).
        lora_init: start the adapters from a LoRA file (PEFT key names).
        timestep_sampling: ``uniform``, ``logit_normal`` or ``mode`` (module docstring).
        logit_mean: mean of the logit-normal.
        logit_std: standard deviation of the logit-normal.
        mode_scale: scale of the ``mode`` density.
    """

    def __init__(
        self,
        pretrained: str = "stabilityai/stable-diffusion-3.5-medium",
        revision: str | None = None,
        variant: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_target_modules: Sequence[str] = SD3_LORA_TARGETS,
        gradient_checkpointing: bool = False,
        check_source: bool = True,
        frozen_dtype: FrozenDType = "float32",
        lora_init: str | None = None,
        timestep_sampling: TimestepSampling = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
    ) -> None:
        if timestep_sampling not in ("uniform", "logit_normal", "mode"):
            raise ConfigError(f"unknown timestep_sampling '{timestep_sampling}'")
        super().__init__(
            pretrained=pretrained,
            revision=revision,
            variant=variant,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_target_modules=lora_target_modules,
            gradient_checkpointing=gradient_checkpointing,
            check_source=check_source,
            frozen_dtype=frozen_dtype,
            lora_init=lora_init,
        )
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.flow_pooled_dim = 0

    def _load_components(self) -> FlowComponents:  # type: ignore[override]
        """Return the model parts; subclasses may build them in code instead."""
        return load_flow_components(
            self.pretrained, self.revision, self.variant, TORCH_DTYPES[self.frozen_dtype]
        )

    def build(self) -> None:
        """Load the parts, freeze what does not train and attach LoRA. Idempotent."""
        if self._built:
            return
        parts = self._load_components()
        self.unet = parts.transformer
        self.vae = parts.vae
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = parts.text_encoders
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = parts.tokenizers
        self.noise_scheduler = parts.scheduler
        self.flow_pooled_dim = int(self.unet.config.pooled_projection_dim)
        for frozen in (self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        if self.lora_rank is not None:
            self._add_lora()
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self._register_sigmas()
        self._built = True

    def load_base_unet(self) -> nn.Module:
        """A second, independent copy of the transformer as loaded (before LoRA)."""
        return self._load_components().transformer

    # ------------------------------------------------------------------ encoding
    def _clip(self, encoder: nn.Module, tokenizer, captions: list[str]) -> tuple[Tensor, Tensor]:
        out = encoder(self._token_ids(tokenizer, captions), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds  # [B, 77, D], [B, P]

    @torch.no_grad()
    def encode_prompt(self, captions: Sequence[str]) -> Tensor:
        """Captions → the packed conditioning ``[B, 77 + 256 + 1, J]`` (module docstring)."""
        captions = list(captions)
        hidden_l, pooled_l = self._clip(self.text_encoder, self.tokenizer, captions)
        hidden_g, pooled_g = self._clip(self.text_encoder_2, self.tokenizer_2, captions)
        width = int(self.unet.config.joint_attention_dim)
        if self.text_encoder_3 is None:
            t5 = hidden_l.new_zeros(len(captions), T5_TOKENS, width)
        else:
            ids = self.tokenizer_3(
                captions,
                padding="max_length",
                max_length=T5_TOKENS,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            ).input_ids.to(self.unet.device)
            t5 = self.text_encoder_3(ids)[0]  # [B, 256, J]
        clip = torch.cat([hidden_l, hidden_g], dim=-1)  # [B, 77, 2048]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip, t5.to(clip.dtype)], dim=-2)  # [B, 333, J]
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)  # [B, 2048]
        return pack_sdxl_conditioning(hidden, pooled).to(self.compute_dtype)

    def velocity(
        self, unet: nn.Module, x_t: Tensor, sigma: Tensor, prompt_embeds: Tensor
    ) -> Tensor:
        """The velocity at noise levels ``sigma`` ``[N]`` in [0, 1] (told ``1000 σ``)."""
        hidden, pooled = unpack_sdxl_conditioning(prompt_embeds, self.flow_pooled_dim)
        t = (sigma * self.num_train_timesteps).to(x_t.dtype)  # [N]
        return unet(
            hidden_states=x_t, encoder_hidden_states=hidden, pooled_projections=pooled, timestep=t
        ).sample
