"""FluxPolicy: packing, the sampler against diffusers' FluxPipeline, training on FLUX.1.

The tiny FLUX.1-dev-shaped pipeline (:func:`save_tiny_flux_pipeline`) is saved in the diffusers
layout and loaded through ``FluxPolicy(pretrained=folder)``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from lightning_pref.models import FluxPolicy, TinyFluxPolicy, save_tiny_flux_pipeline
from lightning_pref.models.flux import image_ids, pack_latents, unpack_latents
from lightning_pref.models.sampling import sample_images


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "tiny-flux")


def test_packing_is_the_pipelines():
    """Our 2x2 packing and position ids equal FluxPipeline's, and unpacking inverts packing."""
    x = torch.randn(2, 4, 8, 6)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 8, 6))
    assert torch.equal(unpack_latents(packed, 8, 6), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    assert torch.equal(image_ids(8, 6, torch.device("cpu"), torch.float32), ids)


def test_sampler_reproduces_the_flux_pipeline(flux_folder):
    """sample_images on FluxPolicy (no CFG, guidance 3.5 into the embedding, FLUX's
    resolution-shifted sigmas) gives FluxPipeline's images for the same seed within 1e-5."""
    policy = FluxPolicy(pretrained=str(flux_folder), sample_size=8)
    policy.build()
    captions = ["a red circle", "a blue square on the left"]
    ours = sample_images(policy, captions, torch.Generator().manual_seed(0), 4, 3.5)
    pipe = FluxPipeline.from_pretrained(str(flux_folder))
    theirs = pipe(
        captions,
        num_inference_steps=4,
        guidance_scale=3.5,
        height=16,
        width=16,
        max_sequence_length=512,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    torch.testing.assert_close((ours + 1) / 2, theirs, atol=1e-5, rtol=0)


def test_training_levels_and_guidance(flux_folder):
    """FLUX's scheduler shifts by resolution, so its table is unshifted: σ(t) = (t+1)/1000; the
    training forward embeds ``guidance`` (3.5), which changes the velocity."""
    policy = FluxPolicy(pretrained=str(flux_folder), sample_size=8)
    policy.build()
    assert policy.sigmas[499].item() == pytest.approx(0.5)
    x = torch.randn(1, 4, 8, 8)
    embeds = policy.encode_prompt(["a red circle"])
    sigma = torch.tensor([0.5])
    a = policy.velocity(policy.unet, x, sigma, embeds)
    b = policy.velocity(policy.unet, x, sigma, embeds, guidance=3.5)
    c = policy.velocity(policy.unet, x, sigma, embeds, guidance=1.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(policy(x, torch.tensor([499]), embeds), a)


@pytest.mark.parametrize("lora", [True, False])
def test_two_dpo_steps_on_flux_change_the_weights(fit_tiny, tmp_path, lora):
    extra = ["--model.init_args.policy.init_args.lora_rank=4"] if lora else []
    version = fit_tiny("tiny_dpo_flux.yaml", tmp_path, *extra)
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    state = ckpt["state_dict"]
    base = TinyFluxPolicy(lora_rank=4 if lora else None)
    torch.manual_seed(0)
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    keys = [k for k in state if "lora_B" in k] if lora else list(state)
    assert keys and any(not torch.equal(state[k], start[k]) for k in keys)
