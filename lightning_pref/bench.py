"""``python -m lightning_pref bench``: Diffusion-DPO training throughput, two paths side by side.

(a) **baseline**: a loop written like the diffusers Diffusion-DPO example: fp32 weights (with
autocast on CUDA), the VAE and the text encoder run on every step, a separate frozen reference
UNet, winner and loser concatenated into one forward, plain ``torch.optim.AdamW``.
(b) **framework**: the real ``Trainer`` + :class:`~lightning_pref.modules.OfflinePairModule` +
:class:`~lightning_pref.objectives.DiffusionDPO`, fed the same synthetic batches.

Both start from the same weights, run ``warmup`` steps that are not timed and then ``steps``
timed optimizer steps, one path after the other in one process. Reported: pairs/s, the ratio
(b)/(a), FLOPs per pair (counted with ``torch.utils.flop_counter`` on one step of each path),
achieved TFLOP/s, MFU when a peak is known (``--peak_tflops``), and peak CUDA memory.

This is the first part of the throughput work: the fast-path options (cached latents, bf16
reference, channels_last, ``torch.compile``, ...) and the SD1.5/SDXL architectures are not
built yet; the model is :class:`~lightning_pref.models.TinyDiffusionPolicy` at a chosen size.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from lightning import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO
from lightning_pref.types import ImagePairBatch

__all__ = ["BenchArgs", "bench_main", "run_bench"]


@dataclass
class BenchArgs:
    """Arguments of ``python -m lightning_pref bench``.

    Attributes:
        sample_size: UNet latent size (images are twice that: the tiny VAE halves them).
        block_out_channels: UNet widths.
        cross_attention_dim: text-embedding width.
        batch_size: pairs per optimizer step.
        steps: timed optimizer steps per path.
        warmup: untimed steps before them.
        beta: DPO beta (the loss is the same arithmetic in both paths).
        lr: AdamW learning rate.
        device: 'auto' (CUDA if available), 'cpu', 'cuda'.
        peak_tflops: the device's peak TFLOP/s for MFU (None: MFU is not reported).
        out: folder for bench.json and bench.md (None: print only).
    """

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
    out: str | None = None


def _policy(args: BenchArgs) -> TinyDiffusionPolicy:
    policy = TinyDiffusionPolicy(
        sample_size=args.sample_size,
        block_out_channels=args.block_out_channels,
        cross_attention_dim=args.cross_attention_dim,
        seed=0,
    )
    policy.build()
    return policy


class _Pairs(Dataset):
    """Synthetic pairs in [-1, 1] with fixed captions, the same for both paths."""

    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(n, 2, 3, size, size, generator=g) * 2 - 1
        self.captions = [f"a red circle number {i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.pixels[i], self.captions[i]


def _collate(items: list[tuple[torch.Tensor, str]]) -> ImagePairBatch:
    pixels = torch.stack([p for p, _ in items])
    n = len(items)
    return ImagePairBatch(pixels[:, 0], pixels[:, 1], [c for _, c in items], torch.ones(n))


class _Data(LightningDataModule):
    def __init__(self, dataset: _Pairs, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch = dataset, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, self.batch, shuffle=False, collate_fn=_collate)


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
    pixels = torch.cat([batch.pixels_w, batch.pixels_l]).to(device)
    with torch.no_grad():  # the example encodes every step
        latents = policy.vae.encode(pixels).latent_dist.sample(gen)
        latents = latents * policy.vae.config.scaling_factor
        ids = policy.tokenizer(
            batch.captions, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        embeds = policy.text_encoder(ids)[0].repeat(2, 1, 1)
    bsz = len(batch.captions)
    noise = torch.randn(latents[:bsz].shape, generator=gen, device=device).repeat(2, 1, 1, 1)
    t = torch.randint(0, 1000, (bsz,), generator=gen, device=device).repeat(2)
    noisy = policy.noise_scheduler.add_noise(latents, noise, t)
    with autocast:
        pred = unet(noisy, t, encoder_hidden_states=embeds).sample
        with torch.no_grad():
            ref_pred = ref(noisy, t, encoder_hidden_states=embeds).sample
    loss = _dpo_loss(pred, ref_pred, noise, args.beta)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(args: BenchArgs, data: _Pairs, device: torch.device) -> dict[str, float]:
    """Time the example-style loop; returns seconds, pairs/s and FLOPs per pair."""
    policy = _policy(args).to(device)
    unet = policy.unet.train()
    ref = copy.deepcopy(unet).requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=args.lr)
    parts = {"policy": policy, "unet": unet, "ref": ref, "opt": opt, "device": device}
    loader = DataLoader(data, args.batch_size, shuffle=False, collate_fn=_collate)
    batches = iter(loader)
    gen = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        _baseline_step(parts, next(batches), args, gen)
    flops = counter.get_total_flops() / args.batch_size
    for _ in range(args.warmup - 1):
        _baseline_step(parts, next(batches), args, gen)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        _baseline_step(parts, next(batches), args, gen)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs_per_s": args.steps * args.batch_size / seconds,
        "flops": flops,
    }


class _Clock(Callback):
    """Times the optimizer steps after ``warmup``; counts FLOPs on the first step."""

    def __init__(self, warmup: int, batch_size: int) -> None:
        self.warmup, self.batch_size = warmup, batch_size
        self.start = self.end = 0.0
        self.flops = 0.0
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == 0:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        if trainer.global_step == self.warmup:
            _sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops() / self.batch_size
            self._counter = None
        _sync(trainer.strategy.root_device)
        self.end = time.perf_counter()


def run_framework(args: BenchArgs, data: _Pairs, device: torch.device) -> dict[str, float]:
    """Time the framework's Trainer path on the same batches."""
    from functools import partial

    module = OfflinePairModule(
        _policy(args),
        DiffusionDPO(beta=args.beta),
        optimizer=partial(torch.optim.AdamW, lr=args.lr),
        reference="copy",
    )
    clock = _Clock(args.warmup, args.batch_size)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    trainer.fit(module, _Data(data, args.batch_size))
    seconds = clock.end - clock.start
    return {
        "seconds": seconds,
        "pairs_per_s": args.steps * args.batch_size / seconds,
        "flops": clock.flops,
    }


def run_bench(args: BenchArgs) -> dict[str, Any]:
    """Run both paths and return the report (also written to ``args.out`` if given)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    data = _Pairs(args.batch_size * (args.warmup + args.steps), 2 * args.sample_size)
    report: dict[str, Any] = {"args": asdict(args), "device": str(device), "paths": {}}
    report["device_name"] = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    for name, fn in (("baseline", run_baseline), ("framework", run_framework)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = fn(args, data, device)
        result["tflops_per_s"] = result["flops"] * result["pairs_per_s"] / 1e12
        if args.peak_tflops:
            result["mfu"] = result["tflops_per_s"] / args.peak_tflops
        if device.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report["paths"][name] = result
    paths = report["paths"]
    report["ratio"] = paths["framework"]["pairs_per_s"] / paths["baseline"]["pairs_per_s"]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "bench.md").write_text(format_table(report) + "\n")
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = [
        f"Device: {report['device_name']}; batch {report['args']['batch_size']} pairs, "
        f"{report['args']['steps']} timed steps after {report['args']['warmup']} warm-up.",
        "",
        "| path | pairs/s | GFLOP/pair | TFLOP/s | MFU | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["paths"].items():
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
        mem = f"{r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else "n/a"
        lines.append(
            f"| {name} | {r['pairs_per_s']:.1f} | {r['flops'] / 1e9:.3f} | "
            f"{r['tflops_per_s']:.4f} | {mfu} | {mem} |"
        )
    lines += ["", f"framework / baseline: {report['ratio']:.2f}x"]
    return "\n".join(lines)


def bench_main(argv: list[str]) -> dict[str, Any]:
    """Parse ``bench``'s arguments, run it and print the table."""
    parser = ArgumentParser(prog="python -m lightning_pref bench", exit_on_error=False)
    parser.add_class_arguments(BenchArgs, as_group=False)
    config = parser.parse_args(argv)
    args = BenchArgs(
        **{k: v for k, v in vars(config).items() if k in BenchArgs.__dataclass_fields__}
    )
    args.block_out_channels = tuple(args.block_out_channels)
    report = run_bench(args)
    print(format_table(report))
    return report
