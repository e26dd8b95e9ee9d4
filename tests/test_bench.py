"""The throughput bench: every path runs and counts the work it should, the SD1.5/SDXL
architectures match the published models (built on the meta device, nothing runs), and the
on-policy report counts its step pairs. Speed itself is measured by the bench, never asserted."""

import json

import pytest
import torch

from lightning_pref.__main__ import main
from lightning_pref.commands.bench.models import (
    BenchDiffusionPolicy,
    BrightnessScorer,
    build_arch_components,
    unet_forward_flops,
)
from lightning_pref.commands.bench.run import BenchArgs, _dpo_loss, resolve_fast, run_bench

TINY = dict(sample_size=8, block_out_channels=(8, 16), cross_attention_dim=16, batch_size=2)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_bench_runs_all_paths_and_the_onpolicy_round(tmp_path, capsys):
    """Three paths and one on-policy round on the tiny model, through the CLI.

    UNet work per pair: the policy's forward + backward and the reference's forward on 2 images
    ≈ 8 forwards (slightly less: conv_in computes no input gradient), the same in every path.
    framework_fast reads the cache: no VAE or text-encoder FLOPs, all its FLOPs are the UNets'.
    On-policy, 4 DDIM steps (751, 501, 251, 1), branching from 751 with P=2 prompts, k=4: one
    step pair per transition and prompt, 4 x 2 = 8 pairs; UNet forwards (CFG doubles each):
    2·P at the branch step + 3 steps x 2·P·k = 4 + 48 = 52 images.
    """
    main(
        ["bench", "--sample_size", "8", "--block_out_channels", "[8, 16]",
         "--cross_attention_dim", "16", "--batch_size", "2", "--steps", "2", "--warmup", "1",
         "--onpolicy", "true", "--onpolicy_prompts", "2", "--onpolicy_steps", "4",
         "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    for row in ("| baseline |", "| framework |", "| framework_fast |", "On-policy SPO"):
        assert row in out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("Device: CPU")
    base, plain, fast = (report["paths"][k] for k in ("baseline", "framework", "framework_fast"))
    assert report["ratio"] == plain["pairs_per_s"] / base["pairs_per_s"]
    assert report["ratios"]["framework_fast"] == fast["pairs_per_s"] / base["pairs_per_s"]
    ideal = report["arch"]["ideal_unet_flops_per_pair"]
    for result in (base, plain, fast):
        assert 0.9 * ideal < result["unet_flops"] <= ideal
        assert result["tflops_per_s"] == result["unet_flops"] * result["pairs_per_s"] / 1e12
    assert abs(fast["unet_flops"] / base["unet_flops"] - 1) < 0.02
    assert abs(plain["flops"] / base["flops"] - 1) < 0.10  # both encode every step
    assert base["flops"] > 1.1 * base["unet_flops"]  # VAE + text encoder counted...
    assert fast["flops"] == pytest.approx(
        fast["unet_flops"], rel=1e-3
    )  # ...and gone with the cache
    onpolicy = report["onpolicy"]
    assert onpolicy["pairs_per_round"] == 8 and 0 <= onpolicy["valid_per_round"] <= 8
    forward = report["arch"]["unet_forward_flops_per_image"]
    assert onpolicy["unet_flops_per_round"] == 52 * forward
    assert onpolicy["pairs_per_s"] > 0 and onpolicy["valid_pairs_per_s"] <= onpolicy["pairs_per_s"]


def test_sdxl_layout_and_fast_options_run_in_both_loops():
    """tiny_sdxl: the baseline loop, and framework_fast from a cache of packed SDXL conditioning
    ([B, L + 1, D]), both go through encode_prompt/unet_forward and do the same UNet work; the
    fast options that run on CPU are on (channels-last, a bf16 reference under inference_mode,
    fused AdamW); MFU against a given peak."""
    args = BenchArgs(arch="tiny_sdxl", **TINY, steps=1, warmup=1, peak_tflops=1.0,
                     paths=["baseline", "framework_fast"], fast_channels_last=True,
                     fast_reference_dtype="bfloat16", fused_adamw=True)  # fmt: skip
    report = run_bench(args)
    assert report["fast"]["reference_dtype"] == "bfloat16" and report["fast"]["cached"]
    base, fast = report["paths"]["baseline"], report["paths"]["framework_fast"]
    assert abs(fast["unet_flops"] / base["unet_flops"] - 1) < 0.02
    assert base["flops"] > 1.1 * fast["flops"]  # the baseline also runs VAE and text encoders
    assert fast["cache_build_s"] > 0
    for result in (base, fast):
        assert result["mfu"] == result["tflops_per_s"] / 1.0


def test_fast_defaults_follow_the_device():
    args = BenchArgs()
    cpu, cuda = resolve_fast(args, torch.device("cpu")), resolve_fast(args, torch.device("cuda"))
    assert (cpu["compile"], cpu["channels_last"], cpu["fused_adamw"]) == (False, False, False)
    assert (cpu["reference_dtype"], cpu["precision"]) == (None, "32-true")
    assert (cuda["compile"], cuda["channels_last"], cuda["fused_adamw"]) == (True, True, True)
    assert (cuda["reference_dtype"], cuda["precision"]) == ("bfloat16", "bf16-mixed")
    args = BenchArgs(fast_compile=False, fast_reference_dtype=None, fast_precision="bf16-true")
    cuda = resolve_fast(args, torch.device("cuda"))
    assert (cuda["compile"], cuda["reference_dtype"], cuda["precision"]) == (
        False, None, "bf16-true")  # fmt: skip
    with pytest.raises(ValueError, match="unknown --paths"):
        run_bench(BenchArgs(paths=["nope"]))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="warmup must be >= 2"):
        run_bench(BenchArgs(**TINY, warmup=1, paths=["framework_fast"], fast_compile=True))


def test_sd15_and_sdxl_match_the_published_models():
    """Built on the meta device (no memory, no compute). Published parameter counts: UNets
    SD1.5 859,520,964 and SDXL 2,567,463,684; VAE 83,653,863; CLIP-L text 123,060,480; OpenCLIP
    bigG text with projection 694,659,840. The SD1.5 UNet forward at 64x64 latents with a 77x768
    context: the issue's ≈ 803 GFLOP per image (measured: 803.27), within 5%."""
    with torch.device("meta"):
        sd15 = build_arch_components("sd15", 512)
        sdxl = build_arch_components("sdxl", 1024)
    assert _params(sd15.unet) == 859_520_964
    assert abs(_params(sd15.unet) / 859.52e6 - 1) < 1e-3
    assert _params(sdxl.unet) == 2_567_463_684
    assert abs(_params(sdxl.unet) / 2.567e9 - 1) < 1e-3
    assert _params(sd15.vae) == _params(sdxl.vae) == 83_653_863
    assert _params(sd15.text_encoder) == 123_060_480
    assert _params(sdxl.text_encoder_2) == 694_659_840
    assert (sd15.vae.config.scaling_factor, sdxl.vae.config.scaling_factor) == (0.18215, 0.13025)
    flops = unet_forward_flops(sd15.unet)  # 64x64 latents, [1, 77, 768] context
    assert abs(flops / 803e9 - 1) < 0.05
    # SDXL at 128x128 with [1, 77, 2048] and the text_time conditioning: 6761.24 GFLOP counted
    assert abs(unet_forward_flops(sdxl.unet) / 6761.24e9 - 1) < 0.01


def test_bench_policy_encodes_and_denoises_both_layouts_on_meta():
    """The SDXL policy packs [B, 77 + 1, 768 + 1280] conditioning and its unet_forward unpacks it;
    latents are resolution / 8."""
    shapes = {}
    for arch, resolution in (("sd15", 256), ("sdxl", 512)):
        policy = BenchDiffusionPolicy(arch, resolution)
        with torch.device("meta"):
            policy.build()
            embeds = policy.encode_prompt(["a red circle", ""])
            x = torch.zeros(2, 4, policy.latent_size, policy.latent_size)
            out = policy.unet_forward(policy.unet, x, torch.tensor([10, 20]), embeds)
        shapes[arch] = (tuple(embeds.shape), tuple(out.shape), policy.is_sdxl)
    assert shapes["sd15"] == ((2, 77, 768), (2, 4, 32, 32), False)
    assert shapes["sdxl"] == ((2, 78, 2048), (2, 4, 64, 64), True)


def test_brightness_scorer_is_scaled_mean_pixel():
    """Half the pixels at 1 and half at -0.5: mean 0.25, times 100 = 25."""
    images = torch.cat([torch.ones(1, 3, 2, 4), torch.full((1, 3, 2, 4), -0.5)], dim=2)
    assert torch.allclose(BrightnessScorer()(images, ["x"]), torch.tensor([25.0]))


def test_baseline_loss_is_diffusion_dpo():
    """The baseline's loss equals DiffusionDPO on the same predictions: policy exact on the winner
    (mse 0) and off by 1 on the loser (mse 1), reference off by 1 on both: inside = 0.5*beta,
    loss = -log(sigmoid(0.5)) at beta 1 = 0.474077."""
    zeros, ones = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    pred, ref, target = torch.cat([zeros, ones]), torch.cat([ones, ones]), torch.cat([zeros, zeros])
    loss = _dpo_loss(pred, ref, target, beta=1.0)
    assert torch.isclose(loss, torch.tensor(0.474077), atol=1e-6)


def test_bench_sd35m_counts_on_meta(tmp_path, capsys):
    """``bench --arch sd35m``: SD3.5 Medium's 2,243,171,520 transformer parameters (its config,
    as tests/real counts it), the backward about twice the forward, and a DPO pair costing
    2 (fwd + bwd) + 2 fwd; the table and bench.json are written."""
    import json

    from lightning_pref.__main__ import main

    main(["bench", "--arch", "sd35m", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["transformer_params"] == 2_243_171_520
    assert (report["image_tokens"], report["text_tokens"]) == (1024, 333)
    fwd, train = report["forward_gflop_per_image"], report["forward_backward_gflop_per_image"]
    assert 2.5 < train / fwd < 3.5
    assert report["dpo_gflop_per_pair"] == pytest.approx(2 * train + 2 * fwd)
    assert "flow DPO, GFLOP per pair" in capsys.readouterr().out
