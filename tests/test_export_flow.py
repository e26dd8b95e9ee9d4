"""``export`` of flow runs: SD3 and FLUX pipelines and LoRA files that sample as ours do.

The tiny SD3 and FLUX models built in code are tuned for 2 steps of flow DPO (full, and LoRA rank 4
alpha 8: PEFT scale 2, folded into the file); each export is loaded with diffusers and must give
the images of :func:`lightning_pref.models.sampling.sample_images` for the same seed.
"""

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from lightning_pref.__main__ import main
from lightning_pref.models import save_tiny_flux_pipeline, save_tiny_sd3_pipeline
from lightning_pref.models.sampling import sample_images
from lightning_pref.runs import find_run, load_module

CAPTIONS = ["a red circle", "two blue squares"]
POLICY = "--model.init_args.policy.init_args"
LORA = [
    f"{POLICY}.lora_rank=4",
    f"{POLICY}.lora_alpha=8",
    "--model.init_args.optimizer.init_args.lr=0.05",
]
KINDS = {
    "sd3": ("tiny_dpo_sd3.yaml", StableDiffusion3Pipeline, save_tiny_sd3_pipeline, 4.5),
    "flux": ("tiny_dpo_flux.yaml", FluxPipeline, save_tiny_flux_pipeline, 3.5),
}


def _pipe_images(pipe, guidance: float) -> torch.Tensor:
    extra = {"max_sequence_length": 512} if isinstance(pipe, FluxPipeline) else {}
    return pipe(
        CAPTIONS,
        num_inference_steps=3,
        guidance_scale=guidance,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        **extra,
    ).images


def _ours(version: Path, guidance: float) -> torch.Tensor:
    run = find_run(version)
    policy = load_module(run.config, run.ckpt).policy
    return sample_images(policy, CAPTIONS, torch.Generator().manual_seed(0), 3, guidance) / 2 + 0.5


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("how", ["full", "lora", "merged"])
def test_flow_export_reloads_in_diffusers_and_samples_as_ours(fit_tiny, tmp_path, kind, how):
    config, cls, save_base, guidance = KINDS[kind]
    version = fit_tiny(config, tmp_path / "runs", *(LORA if how != "full" else []))
    out = tmp_path / "export"
    extra = ["--merge_lora", "true"] if how == "merged" else []
    main(["export", "--ckpt_path", str(version), "--out", str(out), *extra])
    no_t5 = {"text_encoder_3": None, "tokenizer_3": None} if cls is StableDiffusion3Pipeline else {}
    if how == "lora":
        keys = load_file(str(out / "pytorch_lora_weights.safetensors"))
        assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
        base = save_base(tmp_path / "base")  # the same seeded weights the run started from
        pipe = cls.from_pretrained(str(base), **no_t5)
        pipe.load_lora_weights(str(out))
    else:
        pipe = cls.from_pretrained(str(out), **no_t5)
    images = _pipe_images(pipe, guidance)
    torch.testing.assert_close(images, _ours(version, guidance), atol=1e-5, rtol=0)


def test_a_flow_lora_export_starts_a_new_policys_adapters(fit_tiny, tmp_path):
    """The exported SD3 LoRA file (``transformer.X.lora_A.weight``, scale folded in) given as
    ``lora_init`` to a policy with another alpha reproduces the trained velocity."""
    from lightning_pref.models import FlowPolicy

    version = fit_tiny("tiny_dpo_sd3.yaml", tmp_path / "runs", *LORA)
    main(["export", "--ckpt_path", str(version), "--out", str(tmp_path / "lora")])
    run = find_run(version)
    trained = load_module(run.config, run.ckpt).policy
    base = save_tiny_sd3_pipeline(tmp_path / "base")
    lora = str(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    started = FlowPolicy(pretrained=str(base), lora_rank=4, lora_alpha=2, lora_init=lora)
    started.build()
    x, t = torch.randn(1, 16, 8, 8), torch.tensor([500])
    embeds = trained.encode_prompt(["a red circle"])
    torch.testing.assert_close(started(x, t, embeds), trained(x, t, embeds), rtol=1e-5, atol=1e-5)
