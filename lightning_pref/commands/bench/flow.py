"""``bench --arch sd35m``: size and compute of flow DPO on SD3.5 Medium, counted on meta tensors.

Nothing is allocated or run: the transformer is built on the meta device from SD3.5 Medium's
configuration and torch's ``FlopCounterMode`` counts one forward and one forward + backward at the
chosen resolution (16 latent channels, 2×2 patches, 77 + 256 text tokens, the pooled 2048). A DPO
pair costs the policy's forward + backward on winner and loser plus the reference's forward on
both: ``2·(fwd + bwd) + 2·fwd`` (a full fine-tune; with LoRA the backward skips the frozen
weights' gradients, so this is an upper bound).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lightning_pref.commands.bench.models import flop_counter

__all__ = ["SD35M_TRANSFORMER", "flow_bench", "format_flow"]

# stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X): 24 layers of 24 heads
# x 64, self-attention in the image stream of layers 0-12, RMS q/k norms, 384 position embeddings
SD35M_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
TEXT_TOKENS = 77 + 256  # CLIP-L/G rows + T5 rows, as the SD3 pipeline stacks them


def _flops(transformer: torch.nn.Module, latent: int, backward: bool) -> int:
    with torch.device("meta"):
        x = torch.zeros(1, 16, latent, latent)
        text = torch.zeros(1, TEXT_TOKENS, SD35M_TRANSFORMER["joint_attention_dim"])
        pooled = torch.zeros(1, SD35M_TRANSFORMER["pooled_projection_dim"])
        t = torch.full((1,), 500.0)
    with torch.enable_grad() if backward else torch.no_grad(), flop_counter() as counter:
        out = transformer(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t
        ).sample
        if backward:
            out.sum().backward()
    return int(counter.get_total_flops())


def flow_bench(resolution: int = 512, out: str | None = None) -> dict[str, Any]:
    """Parameters and GFLOP of SD3.5 Medium's transformer per image and per DPO pair.

    Prints the table; with ``out`` also writes ``bench.json`` and ``bench.md`` there.
    """
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(SD35M_TRANSFORMER)
    latent = resolution // 8
    forward = _flops(transformer, latent, backward=False)
    train = _flops(transformer, latent, backward=True)
    report = {
        "arch": "sd35m",
        "resolution": resolution,
        "latent_size": latent,
        "image_tokens": (latent // 2) ** 2,
        "text_tokens": TEXT_TOKENS,
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "forward_gflop_per_image": forward / 1e9,
        "forward_backward_gflop_per_image": train / 1e9,
        "dpo_gflop_per_pair": (2 * train + 2 * forward) / 1e9,
    }
    print(format_flow(report))
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "bench.md").write_text(format_flow(report) + "\n")
    return report


def format_flow(report: dict[str, Any]) -> str:
    """The report as a short Markdown table."""
    rows = [
        ("transformer parameters", f"{report['transformer_params'] / 1e9:.4f} B"),
        ("image / text tokens", f"{report['image_tokens']} / {report['text_tokens']}"),
        ("forward, GFLOP per image", f"{report['forward_gflop_per_image']:.1f}"),
        (
            "forward + backward, GFLOP per image",
            f"{report['forward_backward_gflop_per_image']:.1f}",
        ),
        ("flow DPO, GFLOP per pair", f"{report['dpo_gflop_per_pair']:.1f}"),
    ]
    head = f"SD3.5 Medium at {report['resolution']} px (counted on meta tensors, nothing run)\n\n"
    return head + "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
