"""The trainable diffusion policy: a UNet plus the frozen parts that feed it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.conditioning import pack_sdxl_conditioning, unpack_sdxl_conditioning
from lightning_pref.models.loading import check_source, load_components
from lightning_pref.models.lora import load_lora_init

__all__ = [
    "DiffusionPolicy",
    "TORCH_DTYPES",
]

PredictionType = Literal["epsilon", "v_prediction"]
FrozenDType = Literal["float32", "bfloat16", "float16"]
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
SDXL_NUM_TIME_IDS = 6  # (H, W, crop top, crop left, target H, target W)


class DiffusionPolicy(nn.Module):
    """A text-conditional diffusers UNet with its noise scheduler, text encoder, tokenizer and VAE.

    Only the UNet trains (fully, or through LoRA adapters); the VAE and text encoder(s) are frozen
    and in eval mode. Weights are loaded by :meth:`build`, which the LightningModule calls from
    ``configure_model`` so that sharded strategies can wrap the model at init. The constructor only
    checks that the source exists, so a wrong path or a missing hub connection fails at once.

    The folder decides the backbone. SD1.x and SD2.x (ε or v-prediction, read from the scheduler
    config) condition on the last hidden states ``[B, 77, D]`` of one text encoder. An SDXL base
    folder (``text_encoder_2/``, UNet ``addition_embed_type="text_time"``) is encoded as
    diffusers' ``StableDiffusionXLPipeline.encode_prompt`` does, and packed into the same single
    tensor that the rest of the package repeats, chunks, concatenates and caches:
    ``prompt_embeds [B, 78, 2048]`` = rows 0..76, the penultimate hidden states of
    ``text_encoder`` (768) and ``text_encoder_2`` (1280) concatenated on the last dim; row 77, the
    pooled projection of ``text_encoder_2`` (1280 values) zero-padded to 2048 (see
    :func:`pack_sdxl_conditioning`). :meth:`unet_forward` unpacks it into
    ``encoder_hidden_states`` and ``added_cond_kwargs={"text_embeds", "time_ids"}``, with the
    size conditioning fixed to ``(H, W, 0, 0, H, W)`` for the pixel size of ``x_t`` as the
    official Diffusion-DPO SDXL code fixes it (METHODS §1.2). With
    ``force_zeros_for_empty_prompt`` (SDXL base: True) a caption ``""`` is encoded as all zeros:
    the unconditional branch of CFG, as the SDXL pipeline does, and also captions emptied by
    caption dropout (the official Diffusion-DPO code encodes those: pass False to match it).

    Args:
        pretrained: a diffusers Stable Diffusion (1.x, 2.x or XL) folder or a hub id.
        revision: hub revision.
        variant: weight variant, e.g. ``fp16``.
        unet_path: initialise the UNet from this folder instead of ``pretrained/unet``.
        prediction_type: override the scheduler's ``prediction_type`` (``epsilon`` or
            ``v_prediction``); None keeps the folder's.
        lora_rank: train LoRA adapters of this rank instead of the full UNet; None = full.
        lora_alpha: LoRA alpha; None = ``lora_rank`` (scale 1, as SPO and the diffusers port).
        lora_target_modules: attention projections that get adapters.
        lora_init: start the adapters from this UNet LoRA file (``pytorch_lora_weights
            .safetensors`` in diffusers', the legacy attention-processor or PEFT's key format;
            :mod:`~lightning_pref.models.lora`) instead of at random; its rank must be
            ``lora_rank`` and it must cover ``lora_target_modules`` exactly. The file's update is
            kept whatever ``lora_alpha`` is. The reference stays the base model.
        gradient_checkpointing: trade compute for memory in the UNet.
        check_source: verify at construction that ``pretrained`` can be loaded.
        vae_path: load the VAE from this folder or hub id instead of ``pretrained/vae``; SDXL
            recipes use the fp16-fix VAE ``madebyollin/sdxl-vae-fp16-fix`` (METHODS §1.3, §2.4).
        force_zeros_for_empty_prompt: SDXL only: encode ``""`` as zeros; None = the folder's
            ``model_index.json`` flag (True for SDXL base).
        frozen_dtype: dtype of the frozen VAE and text encoder(s), whatever the files hold
            (``float16`` or ``bfloat16`` halve their memory; a ``force_upcast`` VAE such as
            SDXL's stays float32 under ``float16``). The UNet always loads in float32 (the
            trainable master weights; the Trainer's ``precision`` sets the compute dtype) and
            the text and image encodings are cast to the UNet's dtype, so an fp16 folder and an
            fp32 folder train alike. A ``copy`` reference takes ``fast.reference_dtype``.
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
        vae_path: str | None = None,
        force_zeros_for_empty_prompt: bool | None = None,
        frozen_dtype: FrozenDType = "float32",
        lora_init: str | None = None,
    ) -> None:
        super().__init__()
        if frozen_dtype not in TORCH_DTYPES:
            raise ConfigError(
                f"frozen_dtype must be one of {sorted(TORCH_DTYPES)}, got {frozen_dtype!r}"
            )
        self.frozen_dtype = frozen_dtype
        if lora_init is not None and lora_rank is None:
            raise ConfigError("lora_init needs a LoRA policy: set lora_rank to the file's rank")
        self.lora_init = lora_init
        self.pretrained = pretrained
        self.revision = revision
        self.variant = variant
        self.unet_path = unet_path
        self.vae_path = vae_path
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.prediction_type_override = prediction_type
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_target_modules = list(lora_target_modules)
        self.gradient_checkpointing = gradient_checkpointing
        self.pooled_dim: int | None = None  # set by build() for SDXL
        self.zero_empty_prompt = False
        self._built = False
        if check_source:
            self._check_source()

    # ------------------------------------------------------------------ building
    def _check_source(self) -> None:
        check_source(self.pretrained, self.revision, "pretrained", "model")
        if self.vae_path is not None:
            check_source(self.vae_path, None, "vae_path", "VAE")
        if self.lora_init is not None and not Path(self.lora_init).expanduser().is_file():
            raise ModelLoadError(f"LoRA file '{self.lora_init}' (lora_init) does not exist")

    def _load_components(self) -> DiffusionComponents:
        """Return the model parts; subclasses may build them in code instead."""
        return load_components(
            self.pretrained,
            self.revision,
            self.variant,
            self.unet_path,
            self.vae_path,
            TORCH_DTYPES[self.frozen_dtype],
        )

    def build(self) -> None:
        """Load the parts, freeze what does not train and attach LoRA. Idempotent."""
        if self._built:
            return
        parts = self._load_components()
        self.pooled_dim = self._sdxl_pooled_dim(parts)
        self.unet = parts.unet
        self.vae = parts.vae
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.text_encoder_2 = parts.text_encoder_2 if self.pooled_dim is not None else None
        self.tokenizer_2 = parts.tokenizer_2 if self.pooled_dim is not None else None
        force_zeros = self.force_zeros_for_empty_prompt
        self.zero_empty_prompt = self.pooled_dim is not None and (
            parts.force_zeros_for_empty_prompt if force_zeros is None else force_zeros
        )
        self.noise_scheduler = parts.noise_scheduler
        if self.prediction_type_override is not None:
            self.noise_scheduler.register_to_config(prediction_type=self.prediction_type_override)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"unsupported prediction_type '{self.prediction_type}'")
        for frozen in (self.vae, self.text_encoder, self.text_encoder_2):
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

    def _sdxl_pooled_dim(self, parts: DiffusionComponents) -> int | None:
        """Width of SDXL's pooled text embedding; None for a UNet without added conditioning."""
        config = parts.unet.config
        kind = config.get("addition_embed_type")
        if kind is None:
            return None
        if kind != "text_time" or parts.text_encoder_2 is None:
            raise ConfigError(
                f"'{self.pretrained}': UNet addition_embed_type='{kind}'"
                f"{'' if parts.text_encoder_2 else ' without text_encoder_2/'} is not supported: "
                "use an SD1.x/2.x or SDXL base model"
            )
        pooled = int(parts.text_encoder_2.config.projection_dim)
        time_ids = (config.projection_class_embeddings_input_dim - pooled) / max(
            config.addition_time_embed_dim, 1
        )
        if time_ids != SDXL_NUM_TIME_IDS:
            raise ConfigError(
                f"'{self.pretrained}': the UNet takes {time_ids:g} size/crop ids (an SDXL "
                f"refiner?); only SDXL base's {SDXL_NUM_TIME_IDS} (H, W, 0, 0, H, W) are supported"
            )
        return pooled

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
        if self.lora_init is not None:
            load_lora_init(self.unet, self.lora_init)

    # ------------------------------------------------------------------ properties
    @property
    def is_lora(self) -> bool:
        """Whether the UNet trains through LoRA adapters."""
        return self.lora_rank is not None

    @property
    def is_sdxl(self) -> bool:
        """Whether this is an SDXL model (two text encoders, pooled-text and size conditioning)."""
        return self.pooled_dim is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SD/SDXL; 1 without a VAE)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents the sampler starts from (the UNet's sample size)."""
        config = self.unet.config
        return int(config.in_channels), int(config.sample_size), int(config.sample_size)

    @property
    def uses_cfg(self) -> bool:
        """Whether sampling combines conditional and unconditional predictions (CFG)."""
        return True

    @property
    def is_flow(self) -> bool:
        """Whether this is a rectified-flow model (:class:`~lightning_pref.models.FlowPolicy`)."""
        return False

    @property
    def compute_dtype(self) -> torch.dtype:
        """The UNet's weights dtype: text and image encodings are cast to it."""
        return next(self.unet.parameters()).dtype

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
    def _token_ids(self, tokenizer: Any, captions: list[str]) -> Tensor:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.unet.device)  # [B, L]

    @torch.no_grad()
    def encode_prompt(self, captions: Sequence[str]) -> Tensor:
        """Captions → text conditioning ``[B, L, D]`` of the frozen text encoder(s).

        SD1.x/2.x: the last hidden states. SDXL: the packed tensor ``[B, L + 1, D1 + D2]``
        described in the class docstring (all zeros for ``""`` with the force-zeros flag).
        """
        captions = list(captions)
        if not self.is_sdxl:
            hidden = self.text_encoder(self._token_ids(self.tokenizer, captions))[0]
            return hidden.to(self.compute_dtype)  # [B, L, D]
        ids_1 = self._token_ids(self.tokenizer, captions)
        ids_2 = self._token_ids(self.tokenizer_2, captions)
        out_1 = self.text_encoder(ids_1, output_hidden_states=True)
        out_2 = self.text_encoder_2(ids_2, output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        packed = pack_sdxl_conditioning(hidden, out_2.text_embeds)  # [B, L + 1, D1 + D2]
        if self.zero_empty_prompt:
            empty = torch.tensor([c == "" for c in captions], device=packed.device)
            packed = packed.masked_fill(empty.view(-1, 1, 1), 0.0)
        return packed.to(self.compute_dtype)

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] → latents, sampled from the VAE posterior as the official code does."""
        if self.vae is None:
            return pixels
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        shift = self.vae.config.get("shift_factor") or 0.0  # SD3/FLUX VAEs; SD's have none
        latents = (dist.sample(generator=generator) - shift) * self.vae.config.scaling_factor
        # the VAE hands back channels-last strides; with them the policy (grad) and reference
        # (no grad) convolutions pick different kernels and differ by ~1e-6
        return latents.to(self.compute_dtype).contiguous()

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents → images in [-1, 1] (identity for a pixel-space model).

        Differentiable (TailorPO-G takes reward gradients through it); callers that only sample
        run it under ``no_grad``/``inference_mode``.
        """
        if self.vae is None:
            return latents.clamp(-1, 1)
        shift = self.vae.config.get("shift_factor") or 0.0
        scaled = (latents / self.vae.config.scaling_factor + shift).to(self.vae.dtype)
        images = self.vae.decode(scaled).sample.to(latents.dtype)
        return images.clamp(-1, 1)

    # ------------------------------------------------------------------ noising
    def sample_timesteps(
        self, n: int, generator: torch.Generator, low: int, high: int, device: torch.device
    ) -> Tensor:
        """Training timesteps ``[n]``: uniform integers in ``[low, high)``."""
        return torch.randint(low, high, (n,), generator=generator, device=device)

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

    def add_time_ids(self, x_t: Tensor) -> Tensor:
        """SDXL size conditioning ``[N, 6]``: ``(H, W, 0, 0, H, W)`` with H, W in pixels.

        Original size = target size = the image size, crop offset 0, as in the official
        Diffusion-DPO SDXL code (METHODS §1.2).
        """
        h, w = (int(s) * self.vae_scale_factor for s in x_t.shape[-2:])
        ids = torch.tensor([h, w, 0, 0, h, w], device=x_t.device, dtype=torch.float32)
        return ids.expand(x_t.shape[0], SDXL_NUM_TIME_IDS)

    def unet_forward(
        self, unet: nn.Module, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor
    ) -> Tensor:
        """Run ``unet`` (this policy's or a reference) on :meth:`encode_prompt`'s output.

        Returns ``[N, C, h, w]``.
        """
        if not self.is_sdxl:
            return unet(x_t, timesteps, encoder_hidden_states=prompt_embeds).sample
        assert self.pooled_dim is not None
        hidden, pooled = unpack_sdxl_conditioning(prompt_embeds, self.pooled_dim)
        added = {"text_embeds": pooled, "time_ids": self.add_time_ids(x_t).to(hidden.dtype)}
        return unet(x_t, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added).sample

    def forward(self, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The UNet's prediction ``[N, C, h, w]`` (ε or v)."""
        return self.unet_forward(self.unet, x_t, timesteps, prompt_embeds)
