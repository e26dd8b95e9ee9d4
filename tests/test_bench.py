"""The throughput bench: both paths run, count the same FLOPs, and report a ratio (a smoke test:
speed itself is measured by the bench, never asserted in a test)."""

import json

from lightning_pref.bench import BenchArgs, _dpo_loss, run_bench
from lightning_pref.cli import main


def test_bench_runs_both_paths_and_writes_the_report(tmp_path, capsys):
    main(
        ["bench", "--sample_size", "8", "--block_out_channels", "[8, 16]",
         "--cross_attention_dim", "16", "--batch_size", "2", "--steps", "2", "--warmup", "1",
         "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| framework |" in out and "framework / baseline:" in out
    report = json.loads((tmp_path / "bench.json").read_text())
    base, framework = report["paths"]["baseline"], report["paths"]["framework"]
    assert base["pairs_per_s"] > 0 and framework["pairs_per_s"] > 0
    assert report["ratio"] == framework["pairs_per_s"] / base["pairs_per_s"]
    # the same model and batch: the framework's step does the baseline's work (its FLOPs also
    # include the same VAE and text-encoder passes), within 10%
    assert abs(framework["flops"] / base["flops"] - 1) < 0.10


def test_mfu_is_reported_against_a_given_peak():
    args = BenchArgs(sample_size=8, block_out_channels=(8, 16), cross_attention_dim=16,
                     batch_size=2, steps=1, warmup=1, peak_tflops=1.0)  # fmt: skip
    report = run_bench(args)
    for result in report["paths"].values():
        assert result["mfu"] == result["tflops_per_s"] / 1.0


def test_baseline_loss_is_diffusion_dpo():
    """The baseline's loss equals DiffusionDPO on the same predictions: policy exact on the winner
    (mse 0) and off by 1 on the loser (mse 1), reference off by 1 on both: inside = 0.5*beta,
    loss = -log(sigmoid(0.5)) at beta 1 = 0.474077."""
    import torch

    zeros, ones = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    pred, ref, target = torch.cat([zeros, ones]), torch.cat([ones, ones]), torch.cat([zeros, zeros])
    loss = _dpo_loss(pred, ref, target, beta=1.0)
    assert torch.isclose(loss, torch.tensor(0.474077), atol=1e-6)
