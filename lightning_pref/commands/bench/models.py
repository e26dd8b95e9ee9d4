"""Models and measuring tools of ``python -m lightning_pref bench``.

SD1.5 and SDXL are built from the published configs (``unet/``, ``vae/``, ``text_encoder*/``
``config.json``) at random init, nothing downloaded, so parameter counts and FLOPs are the real
models' (UNets: SD1.5 859,520,964 parameters, SDXL 2,567,463,684; the SD1.5 UNet forward at 64×64
latents, 77×768 context: 803.27 GFLOP per image). The tokenizer is the offline one of
:func:`~lightning_pref.models.tiny.tiny_tokenizer` with 77 positions: its ids (< 514) are valid
CLIP ids, all a throughput run needs. Also: the synthetic pairs, FLOP accounting, the Trainer
step clock and SPO step-pool timing with a free brightness scorer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from inspect import unwrap
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning import Callback, Trainer
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lightning_pref.data.pairs import PairSample
from lightning_pref.data.step_pool import StepPoolSampler
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.tiny import (
    build_tiny_components,
    build_tiny_sdxl_components,
    tiny_tokenizer,
)
from lightning_pref.scoring.base import Scorer

__all__ = [
    "Arch",
    "BenchDiffusionPolicy",
    "BrightnessScorer",
    "StepClock",
    "SyntheticPairs",
    "arch_info",
    "build_arch_components",
    "default_resolution",
    "flop_counter",
    "measure",
    "peak_tflops",
    "sd15_unet_config",
    "sdxl_unet_config",
    "sync",
    "time_step_pools",
    "unet_flops",
    "unet_forward_flops",
]

Arch = Literal["tiny", "tiny_sdxl", "sd15", "sdxl"]
TEXT_LENGTH = 77
SD15_SCALING = 0.18215  # SD VAE latent scale (stable-diffusion-v1-5 vae/config.json)
SDXL_SCALING = 0.13025  # SDXL VAE latent scale (sdxl-base vae/config.json)
# dense bf16 tensor-core peaks (TFLOP/s, data sheets) for MFU when --peak_tflops is not given
KNOWN_PEAKS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}


_UNET = {"in_channels": 4, "out_channels": 4, "layers_per_block": 2}  # both (diffusers' defaults)
_TOKEN_IDS = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}  # tiny_tokenizer's


def sd15_unet_config(sample_size: int = 64) -> dict[str, Any]:
    """The SD1.5 UNet config (``unet/config.json``); ``sample_size`` = resolution / 8."""
    return {
        **_UNET,
        "sample_size": sample_size,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def sdxl_unet_config(sample_size: int = 128) -> dict[str, Any]:
    """The SDXL base UNet config; ``projection_class_embeddings_input_dim`` = 6·256 + 1280."""
    return {
        **_UNET,
        "sample_size": sample_size,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }


def _sd_vae(resolution: int, scaling_factor: float) -> AutoencoderKL:
    """The SD/SDXL VAE (83.65M parameters, 8× downsampling, 3 → 4 channels: the defaults)."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        sample_size=resolution,
        scaling_factor=scaling_factor,
    )


def _clip_config(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
    """A CLIP text tower (projection = width) with the offline tokenizer's BOS/EOS/pad ids."""
    width = {"hidden_size": hidden, "intermediate_size": 4 * hidden, "projection_dim": hidden}
    return CLIPTextConfig(
        vocab_size=49408, num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
        max_position_embeddings=TEXT_LENGTH, **width, **_TOKEN_IDS,
    )  # fmt: skip


def _sd_scheduler() -> DDPMScheduler:
    """SD's training schedule: scaled linear β 0.00085..0.012 over 1000 steps, ε-prediction."""
    linear = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    return DDPMScheduler(**linear, clip_sample=False, steps_offset=1)


def build_arch_components(arch: Arch, resolution: int, seed: int = 0) -> DiffusionComponents:
    """SD1.5 (CLIP-L 768, 12 layers) or SDXL base (+ OpenCLIP bigG 1280, 32 layers) at random init.

    Built on the current default device (``with torch.device(...)``; ``meta`` for counting only).
    """
    if arch not in ("sd15", "sdxl"):
        raise ValueError(f"arch must be 'sd15' or 'sdxl' here, got {arch!r}")
    torch.manual_seed(seed)
    latent = resolution // 8
    clip_l = CLIPTextModel(_clip_config(768, 12, 12, "quick_gelu"))  # 123.06M
    if arch == "sd15":
        unet = UNet2DConditionModel(**sd15_unet_config(latent))
        vae = _sd_vae(resolution, SD15_SCALING)
        return DiffusionComponents(unet, _sd_scheduler(), clip_l, tiny_tokenizer(TEXT_LENGTH), vae)
    unet = UNet2DConditionModel(**sdxl_unet_config(latent))
    big_g = CLIPTextModelWithProjection(_clip_config(1280, 32, 20, "gelu"))  # 694.66M
    return DiffusionComponents(
        unet,
        _sd_scheduler(),
        clip_l,
        tiny_tokenizer(TEXT_LENGTH),
        _sd_vae(resolution, SDXL_SCALING),
        big_g,
        tiny_tokenizer(TEXT_LENGTH, pad_token="!"),
        force_zeros_for_empty_prompt=True,
    )


def default_resolution(arch: Arch, sample_size: int = 16) -> int:
    """Image side: 512 for SD1.5, 1024 for SDXL, ``2 * sample_size`` for the tiny models."""
    return {"sd15": 512, "sdxl": 1024}.get(arch, 2 * sample_size)


class BenchDiffusionPolicy(DiffusionPolicy):
    """A random-init policy of a chosen architecture, built in code (usable from YAML too).

    Args:
        arch: ``sd15``, ``sdxl`` (the real architectures), ``tiny`` or ``tiny_sdxl`` (the models
            of :mod:`lightning_pref.models.tiny`, for CPU).
        resolution: image side; None = 512 (sd15), 1024 (sdxl), ``2 * sample_size`` (tiny).
            The latent side (UNet ``sample_size``) is ``resolution / 8`` (tiny: ``/ 2``).
        block_out_channels: UNet widths of the tiny models.
        cross_attention_dim: text width of the tiny models.
        seed: initialisation seed.
        lora_rank: LoRA rank (alpha = rank), or None for full fine-tuning.
        gradient_checkpointing: trade compute for memory in the UNet.
    """

    def __init__(
        self,
        arch: Arch = "sd15",
        resolution: int | None = None,
        block_out_channels: Sequence[int] = (32, 64),
        cross_attention_dim: int = 32,
        seed: int = 0,
        lora_rank: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            f"<random {arch}>", lora_rank=lora_rank, check_source=False,
            gradient_checkpointing=gradient_checkpointing,
        )  # fmt: skip
        if arch not in ("tiny", "tiny_sdxl", "sd15", "sdxl"):
            raise ValueError(f"unknown arch {arch!r}: use tiny, tiny_sdxl, sd15 or sdxl")
        self.arch = arch
        self.resolution = resolution if resolution is not None else default_resolution(arch)
        factor = 2 if arch.startswith("tiny") else 8
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of {factor}")
        self.latent_size = self.resolution // factor
        self.block_out_channels = tuple(block_out_channels)
        self.cross_attention_dim = cross_attention_dim
        self.seed = seed

    def _load_components(self) -> DiffusionComponents:
        if not self.arch.startswith("tiny"):
            return build_arch_components(self.arch, self.resolution, self.seed)
        build = build_tiny_sdxl_components if self.arch == "tiny_sdxl" else build_tiny_components
        width, cross = self.block_out_channels, self.cross_attention_dim
        return build(self.latent_size, width, cross, seed=self.seed)


def arch_info(policy: BenchDiffusionPolicy) -> dict[str, Any]:
    """Size and UNet cost of a bench policy, counted on the meta device.

    A pair costs ≈ 8 UNet forwards: policy forward + backward (≈ 2) and reference, on both images.
    """
    with torch.device("meta"):
        parts = policy._load_components()
    forward = unet_forward_flops(parts.unet, text_length=parts.tokenizer.model_max_length)
    return {
        "arch": policy.arch,
        "resolution": policy.resolution,
        "latent_size": policy.latent_size,
        "unet_params": sum(p.numel() for p in parts.unet.parameters()),
        "unet_forward_flops_per_image": forward,
        "ideal_unet_flops_per_pair": 8 * forward,
    }


class BrightnessScorer(Scorer):
    """A free scorer for throughput runs: ``scale`` × the mean pixel value (images in [-1, 1]).

    Args:
        scale: at 100 a mean-pixel gap of 0.0062 passes SPO's threshold 0.3 on tanh(gap / 2).
    """

    def __init__(self, scale: float = 100.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """``[N]`` scores of images ``[N, 3, H, W]``."""
        return self.scale * images.float().mean(dim=(1, 2, 3))


def unet_forward_flops(unet: UNet2DConditionModel, batch: int = 1, text_length: int = 77) -> int:
    """FLOPs of one forward of a UNet built on the meta device, at its ``sample_size``.

    SDXL's added conditioning is included. Nothing is computed: huge models count in a second.
    """
    cfg, size = unet.config, unet.config.sample_size
    with torch.device("meta"):
        x = torch.zeros(batch, cfg.in_channels, size, size)  # [N, C, h, w]
        t = torch.full((batch,), 500, dtype=torch.long)
        context = torch.zeros(batch, text_length, cfg.cross_attention_dim)  # [N, L, D]
        added = None
        if cfg.addition_embed_type == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            added = {"text_embeds": torch.zeros(batch, pooled), "time_ids": torch.zeros(batch, 6)}
    with torch.no_grad(), flop_counter() as counter:
        unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added)
    return int(counter.get_total_flops())


class SyntheticPairs(Dataset):
    """``n`` pairs cycling over ``distinct`` random pairs in [-1, 1], each with its own caption."""

    def __init__(self, n: int, resolution: int, distinct: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        shape = (min(n, distinct), 2, 3, resolution, resolution)
        self.pixels = torch.rand(shape, generator=g) * 2 - 1  # [D, 2, 3, R, R]
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> PairSample:
        pair = self.pixels[i % len(self.pixels)]
        return PairSample(pair[0], pair[1], f"a red circle number {i}", 1.0)


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also counts CPU fused attention (torch registers only CUDA's)."""
    aten = torch.ops.aten  # torch's formulas, unwrapped: FlopCounterMode wraps custom ones itself
    cpu = {aten._scaled_dot_product_flash_attention_for_cpu: unwrap(sdpa_flop)}
    cpu[aten._scaled_dot_product_flash_attention_for_cpu_backward] = unwrap(sdpa_backward_flop)
    return FlopCounterMode(display=False, custom_mapping=cpu)


def unet_flops(counter: FlopCounterMode) -> float:
    """FLOPs attributed to UNets: module-tracker keys naming a UNet at the root or one level down.

    A UNet called directly (the baseline's two, the framework's reference) is tracked under its
    class name; the policy's under ``<PolicyClass>.unet``. Backward FLOPs are attributed too.
    """
    total = 0.0
    for key, ops in counter.get_flop_counts().items():
        parts = key.split(".")
        root = parts == ["UNet2DConditionModel"]
        if root or (len(parts) == 2 and parts[1] in ("unet", "reference_unet")):
            total += sum(ops.values())
    return total


def peak_tflops(given: float | None, device: torch.device, name: str) -> tuple[float | None, str]:
    """``(peak TFLOP/s, where it came from)``: the given value, a known GPU's, or None."""
    if given:
        return given, "--peak_tflops"
    if device.type == "cuda":
        for key, value in KNOWN_PEAKS.items():  # "H100 PCIe" is checked before "H100"
            if key in name:
                return value, f"known dense bf16 peak of {key}"
    return None, "unknown (pass --peak_tflops)"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(Callback):
    """Counts FLOPs on the last warm-up step (``counter``), then times the steps after it.

    Under ``torch.compile`` the counted step replays eagerly; counting the first step instead
    would stop dynamo from ever compiling the frame.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.counter: FlopCounterMode | None = None
        self._counting = False

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:  # noqa: D102
        if trainer.global_step == self.warmup - 1:
            self.counter, self._counting = flop_counter(), True
            self.counter.__enter__()
        if trainer.global_step == self.warmup:
            sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:  # noqa: D102
        if self._counting and self.counter is not None:
            self.counter.__exit__(None, None, None)
            self._counting = False
        sync(trainer.strategy.root_device)
        self.end = time.perf_counter()


def time_step_pools(
    policy: DiffusionPolicy, sampler: StepPoolSampler, captions: list[str], rounds: int
) -> dict[str, float]:
    """Generated step pairs/s of ``rounds`` timed rounds, after one untimed round counting FLOPs.

    On CUDA the rounds run under bf16 autocast, as under a ``bf16-mixed`` Trainer.
    """
    device = policy.alphas_cumprod.device
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast, flop_counter() as counter:
        sampler.generate(policy, captions, gen)
    pairs = valid = 0
    sync(device)
    start = time.perf_counter()
    with autocast:
        for _ in range(rounds):
            pool = sampler.generate(policy, captions, gen)
            pairs, valid = pairs + len(pool), valid + int(pool.valid.sum())
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs_per_round": pairs / rounds,
        "valid_per_round": valid / rounds,
        "pairs_per_s": pairs / seconds,
        "valid_pairs_per_s": valid / seconds,
        "flops_per_round": float(counter.get_total_flops()),
        "unet_flops_per_round": unet_flops(counter),
        "unet_tflops_per_s": unet_flops(counter) * rounds / seconds / 1e12,
    }


def measure(fn: Any, device: torch.device, peak: float | None) -> dict[str, Any]:
    """Run ``fn`` (a path) with fresh peak-memory stats; add TFLOP/s and MFU of the UNet work."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    if "unet_flops" in result:
        result["tflops_per_s"] = result["unet_flops"] * result["pairs_per_s"] / 1e12
    if peak:
        result["mfu"] = result.get("tflops_per_s", result.get("unet_tflops_per_s", 0.0)) / peak
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result
