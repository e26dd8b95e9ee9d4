"""PNAPO on the tiny SD3 flow model: noise-tracked pairs, their own noise in training, 2 steps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lightning_pref.data import NoisePairDataModule, generate_noise_pairs
from lightning_pref.models import TinyFlowPolicy
from lightning_pref.models.sampling import derive_seed, flow_euler
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import PNAPO

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a small star"]


def brightness(images, captions):
    return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    policy = TinyFlowPolicy()
    policy.build()
    out = tmp_path_factory.mktemp("pnapo") / "pairs"
    generate_noise_pairs(policy, PROMPTS, brightness, out, num_candidates=3, num_steps=4)
    return policy, out


def test_pairs_hold_the_noise_each_image_came_from(pairs):
    """Re-running the Euler ODE from a stored x_T gives the stored latents; the winner is the
    brighter candidate; x_T of candidate j of prompt i is drawn from derive_seed(0, i, j)."""
    policy, out = pairs
    data = load_file(str(out / "pairs.safetensors"))
    assert json.loads((out / "captions.json").read_text()) == PROMPTS
    assert data["latents_w"].shape == data["noise_w"].shape == (4, 16, 8, 8)
    assert (data["reward_gap"] >= 0).all() and (data["reward_gap"] > 0).any()
    cond = policy.encode_prompt(PROMPTS[:1])
    uncond = policy.encode_prompt([""])
    again = flow_euler(policy, data["noise_w"][:1], cond, uncond, 4, 4.5)
    torch.testing.assert_close(again, data["latents_w"][:1], rtol=0, atol=1e-5)  # batch 1 vs 3
    gens = [torch.Generator().manual_seed(derive_seed(0, 0, j)) for j in range(3)]
    draws = [torch.randn((1, 16, 8, 8), generator=g) for g in gens]
    assert any(torch.equal(d[0], data["noise_w"][0]) for d in draws)


def test_training_uses_each_images_own_noise(pairs):
    """With a NoisePairBatch the module draws no noise: x_t = (1 − σ) x0 + σ x_T per image and
    the target is x_T − x0; pref_prob = σ(reward gap)."""
    _, out = pairs
    data = NoisePairDataModule(str(out), batch_size=2, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = OfflinePairModule(TinyFlowPolicy(), PNAPO())
    module.configure_model()

    def no_draws(*args, **kwargs):
        raise AssertionError("a fresh noise was drawn")

    module.sample_noise = no_draws
    pair = module.denoise_pair(module.to_latents(batch, torch.Generator()), torch.Generator())
    torch.testing.assert_close(pair.target_w, batch.noise_w - batch.latents_w)
    torch.testing.assert_close(pair.target_l, batch.noise_l - batch.latents_l)
    gap = load_file(str(out / "pairs.safetensors"))["reward_gap"]
    assert set(batch.pref_prob.tolist()) <= set(torch.sigmoid(gap).tolist())


def test_two_pnapo_steps(pairs, fit_tiny, tmp_path):
    _, out = pairs
    version = fit_tiny("tiny_pnapo_sd3.yaml", tmp_path, f"--data.init_args.train_dir={out}")
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    base = TinyFlowPolicy()
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    assert any(not torch.equal(v, start[k]) for k, v in ckpt["state_dict"].items())
