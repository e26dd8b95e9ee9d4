"""The trainable diffusion policy: a UNet plus the frozen parts that feed it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.loading import load_components, looks_like_local_path

__all__ = ["DiffusionPolicy", "TinyDiffusionPolicy"]

PredictionType = Literal["epsilon", "v_prediction"]
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


class DiffusionPolicy(nn.Module):
    """A text-conditional diffusers UNet with its noise scheduler, text encoder, tokenizer and VAE.

    Only the UNet trains (fully, or through LoRA adapters); the VAE and text encoder are frozen and
    in eval mode. Weights are loaded by :meth:`build`, which the LightningModule calls from
    ``configure_model`` so that sharded strategies can wrap the model at init. The constructor only
    checks that the source exists, so a wrong path or a missing hub connection fails at once.

    Args:
        pretrained: a diffusers Stable Diffusion folder or a hub id.
        revision: hub revision.
        variant: weight variant, e.g. ``fp16``.
        unet_path: initialise the UNet from this folder instead of ``pretrained/unet``.
        prediction_type: override the scheduler's ``prediction_type`` (``epsilon`` or
            ``v_prediction``); None keeps the folder's.
        lora_rank: train LoRA adapters of this rank instead of the full UNet; None = full.
        lora_alpha: LoRA alpha; None = ``lora_rank`` (scale 1, as SPO and the diffusers port).
        lora_target_modules: attention projections that get adapters.
        gradient_checkpointing: trade compute for memory in the UNet.
        check_source: verify at construction that ``pretrained`` can be loaded.
    """

    def __init__(
        self,
        pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        revision: str | None = None,
        variant: str | None = None,
        unet_path: str | None = None,
        prediction_type: PredictionType | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: bool = False,
        check_source: bool = True,
    ) -> None:
        super().__init__()
        self.pretrained = pretrained
        self.revision = revision
        self.variant = variant
        self.unet_path = unet_path
        self.prediction_type_override = prediction_type
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_target_modules = list(lora_target_modules)
        self.gradient_checkpointing = gradient_checkpointing
        self._built = False
        if check_source:
            self._check_source()

    # ------------------------------------------------------------------ building
    def _check_source(self) -> None:
        if looks_like_local_path(self.pretrained):
            if not Path(self.pretrained).expanduser().is_dir():
                raise ModelLoadError(f"model folder '{self.pretrained}' does not exist")
            return
        from huggingface_hub import snapshot_download

        try:  # configs only: a few KB online, or the local cache offline
            snapshot_download(
                self.pretrained, revision=self.revision, allow_patterns=["*.json", "*.txt"]
            )
        except Exception as err:
            raise ModelLoadError(
                f"cannot reach '{self.pretrained}' on the Hugging Face Hub and it is not cached. "
                f"Download it on a connected machine (`hf download {self.pretrained} --local-dir "
                "DIR`), copy DIR here and pass --model.init_args.policy.init_args.pretrained DIR"
            ) from err

    def _load_components(self) -> DiffusionComponents:
        """Return the model parts; subclasses may build them in code instead."""
        return load_components(self.pretrained, self.revision, self.variant, self.unet_path)

    def build(self) -> None:
        """Load the parts, freeze what does not train and attach LoRA. Idempotent."""
        if self._built:
            return
        parts = self._load_components()
        if parts.unet.config.get("addition_embed_type") is not None:
            raise ConfigError(
                f"'{self.pretrained}' is an SDXL-style UNet (addition_embed_type="
                f"'{parts.unet.config.addition_embed_type}'); its pooled-text and size "
                "conditioning is not supported yet: use an SD1.x/2.x model"
            )
        self.unet = parts.unet
        self.vae = parts.vae
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.noise_scheduler = parts.noise_scheduler
        if self.prediction_type_override is not None:
            self.noise_scheduler.register_to_config(prediction_type=self.prediction_type_override)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"unsupported prediction_type '{self.prediction_type}'")
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        if self.lora_rank is not None:
            self._add_lora()
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.register_buffer(
            "alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        self._built = True

    def load_base_unet(self) -> nn.Module:
        """A second, independent copy of the UNet as loaded (before LoRA).

        The reference model under DeepSpeed ZeRO-3 is made this way: there the loaded UNet's
        parameters are partitioned as they are created and cannot be deep-copied.
        """
        return self._load_components().unet

    def _add_lora(self) -> None:
        from peft import LoraConfig

        self.unet.requires_grad_(False)
        self.unet.add_adapter(
            LoraConfig(
                r=self.lora_rank,
                lora_alpha=self.lora_alpha if self.lora_alpha is not None else self.lora_rank,
                init_lora_weights="gaussian",
                target_modules=self.lora_target_modules,
            )
        )

    # ------------------------------------------------------------------ properties
    @property
    def is_lora(self) -> bool:
        """Whether the UNet trains through LoRA adapters."""
        return self.lora_rank is not None

    @property
    def prediction_type(self) -> str:
        """``epsilon`` or ``v_prediction``."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        """Length of the training noise schedule (1000 for SD)."""
        return int(self.noise_scheduler.config.num_train_timesteps)

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the UNet as the base model: the reference of a LoRA policy."""
        if not self.is_lora:
            raise ConfigError("reference='adapters_off' needs a LoRA policy (set lora_rank)")
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_prompt(self, captions: Sequence[str]) -> Tensor:
        """Token ids → last hidden states ``[B, L, D]`` of the frozen text encoder."""
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.unet.device)  # [B, L]
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] → latents, sampled from the VAE posterior as the official code does."""
        if self.vae is None:
            return pixels
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        latents = dist.sample(generator=generator) * self.vae.config.scaling_factor
        # the VAE hands back channels-last strides; with them the policy (grad) and reference
        # (no grad) convolutions pick different kernels and differ by ~1e-6
        return latents.contiguous()

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents → images in [-1, 1] (identity for a pixel-space model).

        Differentiable (TailorPO-G takes reward gradients through it); callers that only sample
        run it under ``no_grad``/``inference_mode``.
        """
        if self.vae is None:
            return latents.clamp(-1, 1)
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    # ------------------------------------------------------------------ noising
    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward-noise ``x0`` to ``x_t = sqrt(ā_t) x0 + sqrt(1-ā_t) ε``."""
        a = self.alphas_cumprod[timesteps].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """ε for epsilon models, ``v = sqrt(ā) ε - sqrt(1-ā) x0`` for v-prediction."""
        if self.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod[timesteps].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def forward(self, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The UNet's prediction ``[N, C, h, w]`` (ε or v)."""
        return self.unet(x_t, timesteps, encoder_hidden_states=prompt_embeds).sample


class TinyDiffusionPolicy(DiffusionPolicy):
    """A seeded tiny model built in code (see :func:`build_tiny_components`), for tests and demos.

    Args:
        sample_size: latent size of the UNet (images are twice that with the VAE).
        block_out_channels: UNet widths.
        cross_attention_dim: text width.
        with_vae: latent model with a tiny VAE, or pixel-space without one.
        seed: initialisation seed.
        prediction_type: ``epsilon`` or ``v_prediction``.
        lora_rank: LoRA rank, or None for full fine-tuning.
        lora_alpha: LoRA alpha; None = rank.
    """

    def __init__(
        self,
        sample_size: int = 8,
        block_out_channels: Sequence[int] = (8, 16),
        cross_attention_dim: int = 16,
        with_vae: bool = True,
        seed: int = 0,
        prediction_type: PredictionType = "epsilon",
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
    ) -> None:
        super().__init__(
            pretrained="<tiny>",
            prediction_type=prediction_type,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            check_source=False,
        )
        self.tiny_kwargs = {
            "sample_size": sample_size,
            "block_out_channels": tuple(block_out_channels),
            "cross_attention_dim": cross_attention_dim,
            "with_vae": with_vae,
            "prediction_type": prediction_type,
            "seed": seed,
        }

    def _load_components(self) -> DiffusionComponents:
        from lightning_pref.models.tiny import build_tiny_components

        return build_tiny_components(**self.tiny_kwargs)  # type: ignore[arg-type]
