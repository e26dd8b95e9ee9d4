"""``python -m lightning_pref bench``: Diffusion-DPO training throughput, three paths side by side.

(a) **baseline**, written like the diffusers Diffusion-DPO example: fp32 weights (autocast on CUDA),
VAE and text encoder(s) every step, a separate frozen reference UNet, winner and loser in one
forward, plain AdamW. (b) **framework**: ``Trainer`` + ``OfflinePairModule`` + ``DiffusionDPO`` on
the same batches. (c) **framework_fast**: (b) with ``FastPath`` (compile, channels-last, bf16
reference under ``inference_mode``), fused AdamW and ``bf16-mixed``, trained from a latent +
text-embedding cache of the same pairs (built untimed). Same model and weights in every path
(:class:`~lightning_pref.commands.bench.models.BenchDiffusionPolicy`);
``warmup`` untimed steps (the last
counts FLOPs), then ``steps`` timed ones. Reported: pairs/s, ratio to the baseline, FLOPs per pair
(all, and the UNets'), peak CUDA memory, and TFLOP/s and MFU **of the UNet work only** (policy
forward + backward, reference forward: what every path must do; the cache drops the VAE and
text-encoder FLOPs, which would otherwise reward useless work). ``--onpolicy`` times SPO pools.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import Trainer
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from lightning_pref.cli import parse_dataclass
from lightning_pref.commands.bench.flow import flow_bench
from lightning_pref.commands.bench.models import (
    Arch,
    BenchDiffusionPolicy,
    BrightnessScorer,
    StepClock,
    SyntheticPairs,
    arch_info,
    default_resolution,
    flop_counter,
    measure,
    peak_tflops,
    sync,
    time_step_pools,
    unet_flops,
)
from lightning_pref.data.latent_cache import CachedPairDataModule, build_latent_cache
from lightning_pref.data.pairs import PairCollate
from lightning_pref.data.step_pool import StepPoolSampler
from lightning_pref.models.fast import FastPath
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.types import ImagePairBatch

__all__ = ["PATHS", "BenchArgs", "format_table", "main", "resolve_fast", "run_bench"]

PATHS = ("baseline", "framework", "framework_fast")
PathName = Literal["baseline", "framework", "framework_fast"]


@dataclass
class BenchArgs:
    """Arguments of ``python -m lightning_pref bench``.

    Attributes:
        arch: ``tiny`` / ``tiny_sdxl`` (CPU-sized), ``sd15`` / ``sdxl`` (real, random init), or
            ``sd35m`` (SD3.5 Medium's flow transformer: parameters and GFLOP counted on meta
            tensors, nothing timed).
        resolution: image side; None = 512 (sd15), 1024 (sdxl), ``2 * sample_size`` (tiny).
        sample_size: tiny models only: latent side (images are twice that).
        block_out_channels: tiny models only: UNet widths.
        cross_attention_dim: tiny models only: text-embedding width.
        batch_size: pairs per optimizer step.
        steps: timed optimizer steps per path.
        warmup: untimed steps before them (at least 2 with compile: the first compiles).
        beta: DPO beta (the loss is the same arithmetic in every path).
        lr: AdamW learning rate.
        device: 'auto' (CUDA if available), 'cpu', 'cuda'.
        peak_tflops: the device's peak TFLOP/s for MFU; None = a known GPU's bf16 peak, else no MFU.
        paths: which training paths to run.
        num_workers: DataLoader workers of every path.
        fast_compile: framework_fast: ``torch.compile`` policy and reference; None = on for CUDA.
        fast_compile_mode: ``torch.compile`` mode (None = default).
        fast_channels_last: framework_fast: channels-last UNets; None = on for CUDA.
        fast_reference_dtype: framework_fast reference dtype; ``auto``: bfloat16 on CUDA, else None.
        fast_inference_mode: framework_fast: reference under ``torch.inference_mode``.
        fused_adamw: framework_fast: ``AdamW(fused=True)``; None = on for CUDA.
        cached: framework_fast: train from a latent + text-embedding cache of the same pairs.
        fast_precision: framework_fast Trainer precision; None = bf16-mixed on CUDA, 32-true on CPU.
        onpolicy: also time SPO step-pool generation (generated step pairs/s).
        onpolicy_prompts: prompts P per generation round.
        onpolicy_candidates: candidates k per step.
        onpolicy_steps: DDIM steps of the chain (SPO: 20).
        onpolicy_rounds: timed rounds (after one untimed round that counts FLOPs).
        onpolicy_threshold: SPO validity threshold on ``tanh((s_w - s_l) / 2)`` (brightness scorer).
        out: folder for bench.json and bench.md (None: print only).
    """

    arch: Arch | Literal["sd35m"] = "tiny"
    resolution: int | None = None
    sample_size: int = 16
    block_out_channels: tuple[int, ...] = (32, 64)
    cross_attention_dim: int = 32
    batch_size: int = 8
    steps: int = 20
    warmup: int = 3
    beta: float = 5000.0
    lr: float = 1e-5
    device: str = "auto"
    peak_tflops: float | None = None
    paths: list[PathName] = field(default_factory=lambda: list(PATHS))
    num_workers: int = 0
    fast_compile: bool | None = None
    fast_compile_mode: str | None = None
    fast_channels_last: bool | None = None
    fast_reference_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = "auto"
    fast_inference_mode: bool = True
    fused_adamw: bool | None = None
    cached: bool = True
    fast_precision: str | None = None
    onpolicy: bool = False
    onpolicy_prompts: int = 4
    onpolicy_candidates: int = 4
    onpolicy_steps: int = 20
    onpolicy_rounds: int = 1
    onpolicy_threshold: float = 0.3
    out: str | None = None


def resolve_fast(args: BenchArgs, device: torch.device) -> dict[str, Any]:
    """The framework_fast options with the device defaults filled in."""
    cuda = device.type == "cuda"
    ref = args.fast_reference_dtype
    return {
        "compile": cuda if args.fast_compile is None else args.fast_compile,
        "compile_mode": args.fast_compile_mode,
        "channels_last": cuda if args.fast_channels_last is None else args.fast_channels_last,
        "reference_dtype": ("bfloat16" if cuda else None) if ref == "auto" else ref,
        "reference_inference_mode": args.fast_inference_mode,
        "fused_adamw": cuda if args.fused_adamw is None else args.fused_adamw,
        "cached": args.cached,
        "precision": args.fast_precision or ("bf16-mixed" if cuda else "32-true"),
    }


def _resolution(args: BenchArgs) -> int:
    return args.resolution or default_resolution(args.arch, args.sample_size)


def _policy(args: BenchArgs, device: torch.device | None = None) -> BenchDiffusionPolicy:
    """The bench model, built on ``device`` (None: unbuilt; Lightning builds it on the device)."""
    width, cross = args.block_out_channels, args.cross_attention_dim
    policy = BenchDiffusionPolicy(args.arch, _resolution(args), width, cross, seed=0)
    if device is not None:
        with torch.device(device):
            policy.build()
    return policy if device is None else policy.to(device)


def _loader(data: SyntheticPairs, args: BenchArgs) -> DataLoader:
    collate = PairCollate(int(data.pixels.shape[-1]))
    return DataLoader(data, args.batch_size, num_workers=args.num_workers, collate_fn=collate)


def _dpo_loss(pred: torch.Tensor, ref: torch.Tensor, target: torch.Tensor, beta: float):
    """The example's DPO loss on a concatenated [w; l] batch."""
    mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    ref_mse = (ref.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    m_w, m_l = mse.chunk(2)
    r_w, r_l = ref_mse.chunk(2)
    return -F.logsigmoid(-0.5 * beta * ((m_w - m_l) - (r_w - r_l))).mean()


def _baseline_step(parts: dict[str, Any], batch: ImagePairBatch, args: BenchArgs, gen) -> None:
    policy, unet, ref, opt = parts["policy"], parts["unet"], parts["ref"], parts["opt"]
    device = parts["device"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    pixels = torch.cat([batch.pixels_w, batch.pixels_l]).to(device)  # [2B, 3, H, W]
    with torch.no_grad():  # the example encodes every step
        latents = policy.vae.encode(pixels).latent_dist.sample(gen)
        latents = latents * policy.vae.config.scaling_factor  # [2B, C, h, w]
        embeds = policy.encode_prompt(batch.captions).repeat(2, 1, 1)  # [2B, L, D]
    bsz = len(batch.captions)
    noise = torch.randn(latents[:bsz].shape, generator=gen, device=device).repeat(2, 1, 1, 1)
    t = torch.randint(0, 1000, (bsz,), generator=gen, device=device).repeat(2)  # [2B]
    noisy = policy.noise_scheduler.add_noise(latents, noise, t)
    with autocast:
        pred = policy.unet_forward(unet, noisy, t, embeds)
        with torch.no_grad():
            ref_pred = policy.unet_forward(ref, noisy, t, embeds)
    loss = _dpo_loss(pred, ref_pred, noise, args.beta)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _result(seconds: float, args: BenchArgs, counter: FlopCounterMode) -> dict[str, float]:
    """Pairs/s of the timed steps; FLOPs per pair (all, and the UNets') of the counted step."""
    return {
        "seconds": seconds,
        "pairs_per_s": args.steps * args.batch_size / seconds,
        "flops": counter.get_total_flops() / args.batch_size,
        "unet_flops": unet_flops(counter) / args.batch_size,
    }


def run_baseline(args: BenchArgs, data: SyntheticPairs, device: torch.device) -> dict[str, Any]:
    """Time the example-style loop; FLOPs are counted on the last warm-up step."""
    policy = _policy(args, device)
    unet = policy.unet.train()
    ref = copy.deepcopy(unet).requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=args.lr)
    parts = {"policy": policy, "unet": unet, "ref": ref, "opt": opt, "device": device}
    batches = iter(_loader(data, args))
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(args.warmup - 1):
        _baseline_step(parts, next(batches), args, gen)
    with flop_counter() as counter:
        _baseline_step(parts, next(batches), args, gen)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        _baseline_step(parts, next(batches), args, gen)
    sync(device)
    return _result(time.perf_counter() - start, args, counter)


def _fast_setup(
    args: BenchArgs, data: SyntheticPairs, device: torch.device, folder: str
) -> tuple[BenchDiffusionPolicy, DataLoader | CachedPairDataModule, dict[str, Any]]:
    """Policy and data of framework_fast; with ``cached`` the cache is built here (untimed)."""
    if not args.cached:
        return _policy(args), _loader(data, args), {}
    policy = _policy(args, device)
    start = time.perf_counter()
    resolution = int(data.pixels.shape[-1])
    build_latent_cache(policy, data, folder, resolution, args.batch_size, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    kwargs = {"proportion_empty_prompts": 0.0, "seed": 0, "num_workers": args.num_workers}
    cached = CachedPairDataModule(folder, batch_size=args.batch_size, **kwargs)
    return policy, cached, {"cache_build_s": seconds}


def run_framework(
    args: BenchArgs, data: SyntheticPairs, device: torch.device, fast: bool = False
) -> dict[str, Any]:
    """Time the framework's Trainer path on the same pairs, plain or with the fast options."""
    opts, cuda = resolve_fast(args, device), device.type == "cuda"
    if fast and opts["compile"] and args.warmup < 2:
        raise ValueError("--warmup must be >= 2 with compile (the first step compiles)")
    known = {f.name: opts[f.name] for f in fields(FastPath) if f.name in opts}
    fast_path = FastPath(**known) if fast else None
    fused = {"fused": True} if fast and opts["fused_adamw"] else {}
    with tempfile.TemporaryDirectory(prefix="lp_bench_cache_") as folder:
        extra: dict[str, Any] = {}
        if fast:
            policy, data_source, extra = _fast_setup(args, data, device, folder)
        else:
            policy, data_source = _policy(args), _loader(data, args)
        module = OfflinePairModule(
            policy,
            DiffusionDPO(beta=args.beta),
            optimizer=partial(torch.optim.AdamW, lr=args.lr, **fused),
            reference="copy",
            seed=0,
            fast=fast_path,
        )
        clock = StepClock(args.warmup)
        trainer = Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision=opts["precision"] if fast else ("bf16-mixed" if cuda else "32-true"),
            max_steps=args.warmup + args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=[clock],
        )
        trainer.fit(module, data_source)  # a DataLoader or the cache's DataModule
    assert clock.counter is not None
    return {**_result(clock.end - clock.start, args, clock.counter), **extra}


def run_onpolicy(args: BenchArgs, device: torch.device) -> dict[str, Any]:
    """Time SPO step-pool rounds: P prompts × k candidates, both CFG branches in one forward."""
    kwargs = {"num_candidates": args.onpolicy_candidates, "num_steps": args.onpolicy_steps}
    sampler = StepPoolSampler(BrightnessScorer(), threshold=args.onpolicy_threshold, **kwargs)
    captions = [f"a red circle number {i}" for i in range(args.onpolicy_prompts)]
    policy = _policy(args, device)
    return time_step_pools(policy, sampler.to(device), captions, args.onpolicy_rounds)


def run_bench(args: BenchArgs) -> dict[str, Any]:
    """Run the chosen paths (and on-policy generation) and return the report."""
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise ValueError(f"unknown --paths {unknown}: choose from {list(PATHS)}")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    cpu = f"CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    peak, peak_source = peak_tflops(args.peak_tflops, device, name)
    data = SyntheticPairs(args.batch_size * (args.warmup + args.steps), _resolution(args))
    report: dict[str, Any] = {
        "args": asdict(args),
        "device": str(device),
        "device_name": name,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "arch": arch_info(_policy(args)),
        "fast": resolve_fast(args, device),
        "paths": {},
    }
    runners = {
        "baseline": partial(run_baseline, args, data, device),
        "framework": partial(run_framework, args, data, device),
        "framework_fast": partial(run_framework, args, data, device, fast=True),
    }
    for path in [p for p in PATHS if p in args.paths]:
        report["paths"][path] = measure(runners[path], device, peak)
    if args.onpolicy:
        report["onpolicy"] = measure(partial(run_onpolicy, args, device), device, peak)
    paths = report["paths"]
    if "baseline" in paths:
        base = paths["baseline"]["pairs_per_s"]
        report["ratios"] = {k: v["pairs_per_s"] / base for k, v in paths.items() if k != "baseline"}
        if "framework" in report["ratios"]:
            report["ratio"] = report["ratios"]["framework"]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "bench.md").write_text(format_table(report) + "\n")
    return report


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: a header naming device and model, one row per path."""
    a, arch, peak = report["args"], report["arch"], report["peak_tflops"]
    lines = [
        f"Device: {report['device_name']}. Model: {arch['arch']} at {arch['resolution']} px "
        f"(latent {arch['latent_size']}), UNet {arch['unet_params'] / 1e6:.2f}M parameters, "
        f"{arch['unet_forward_flops_per_image'] / 1e9:.4g} GFLOP per forward per image. "
        f"Batch {a['batch_size']} pairs, {a['steps']} timed steps after {a['warmup']} warm-up.",
        f"UNet TFLOP/s and MFU count the UNet work only (policy forward + backward, reference "
        f"forward); peak {_fmt(peak, '.1f', ' TFLOP/s')} ({report['peak_source']}).",
        "",
        "| path | pairs/s | vs baseline | UNet GFLOP/pair | all GFLOP/pair | UNet TFLOP/s | MFU "
        "| peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = report.get("ratios", {})
    for name, r in report["paths"].items():
        ratio = 1.0 if name == "baseline" else ratios.get(name)
        lines.append(
            f"| {name} | {r['pairs_per_s']:.2f} | {_fmt(ratio, '.2f', 'x')} | "
            f"{r['unet_flops'] / 1e9:.4g} | {r['flops'] / 1e9:.4g} | {r['tflops_per_s']:.4g} | "
            f"{_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('peak_memory_gib'), '.2f', ' GiB')} |"
        )
    if "framework" in ratios:
        lines.append(f"\nframework / baseline: {ratios['framework']:.2f}x")
    if "framework_fast" in report["paths"]:
        opts = ", ".join(f"{k}={v}" for k, v in report["fast"].items())
        lines.append(f"\nframework_fast options: {opts}.")
    if "onpolicy" in report:
        o = report["onpolicy"]
        lines.append(
            f"\nOn-policy SPO step pools ({a['onpolicy_prompts']} prompts x "
            f"{a['onpolicy_candidates']} candidates, {a['onpolicy_steps']} DDIM steps): "
            f"{o['pairs_per_s']:.2f} step pairs/s ({o['valid_pairs_per_s']:.2f} valid/s; "
            f"{o['pairs_per_round']:.0f} pairs, {o['valid_per_round']:.1f} valid per round), "
            f"UNet {o['unet_tflops_per_s']:.4g} TFLOP/s, MFU {_fmt(o.get('mfu'), '.1%')}, "
            f"peak memory {_fmt(o.get('peak_memory_gib'), '.2f', ' GiB')}."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> dict[str, Any]:
    """Parse ``bench``'s arguments, run it and print the table."""
    args = parse_dataclass(BenchArgs, argv, "python -m lightning_pref bench")
    args.block_out_channels, args.paths = tuple(args.block_out_channels), list(args.paths)
    if args.arch == "sd35m":  # counted on meta tensors, nothing timed
        return flow_bench(args.resolution or 512, args.out)
    report = run_bench(args)
    print(format_table(report))
    return report
