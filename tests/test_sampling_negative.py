"""Negative-model guidance (Diffusion-NPO / Self-NPO, METHODS §11.1): sampler, weight blending."""

import copy

import pytest
import torch
from torch.testing import assert_close

from lightning_pref.errors import ConfigError
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.models.negative import NegativeGuidance, merged_unet, negative_state_dict
from lightning_pref.models.sampling import cfg_predict, sample_images


def _const(value: float, calls: list | None = None):
    def denoiser(x, t, embeds):
        if calls is not None:
            calls.append(embeds.clone())
        return torch.full_like(x, value)

    return denoiser


def test_cfg_default_path_is_unchanged():
    """Without a negative denoiser: one batched forward on [uncond; cond], as before."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.ones(2, 3, 5), torch.zeros(2, 3, 5)
    t = torch.tensor([10, 20])

    def denoiser(x_in, t_in, e):
        return x_in * (1 + e.mean(dim=(1, 2)).view(-1, 1, 1, 1)) + t_in.view(-1, 1, 1, 1) * 0.01

    out = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
    expected = out[:2] + 7.5 * (out[2:] - out[:2])
    assert torch.equal(cfg_predict(denoiser, x, t, cond, uncond, 7.5), expected)


def test_negative_denoiser_only_sees_the_unconditional_branch():
    """ε = ε_neg(x, "") + w (ε_pos(x, c) - ε_neg(x, "")) = 0.5 + 3 (2 - 0.5) = 5 exactly."""
    pos_calls, neg_calls = [], []
    x = torch.zeros(2, 4, 8, 8)
    cond, uncond, t = torch.ones(2, 3, 5), torch.zeros(2, 3, 5), torch.tensor([1, 2])
    out = cfg_predict(_const(2.0, pos_calls), x, t, cond, uncond, 3.0, _const(0.5, neg_calls))
    assert torch.equal(out, torch.full_like(x, 5.0))
    assert len(pos_calls) == 1 and torch.equal(pos_calls[0], cond)
    assert len(neg_calls) == 1 and torch.equal(neg_calls[0], uncond)
    # w = 1 means no guidance: the conditional branch alone, the negative is not run
    assert torch.equal(cfg_predict(_const(2.0), x, t, cond, uncond, 1.0, _const(0.5)), 2 + 0 * x)


def test_negative_state_dict_exact():
    """θ_neg = θ_pos + (θ_npo - θ_base) - m (θ_pos - θ_base): base 1, pos 3, npo 2:
    m = 0 -> 3 + 1 = 4 (official default, θ_pos + δ); m = 0.5 -> 4 - 0.5 * 2 = 3; m = 1 -> 2."""
    base, pos, npo = ({"w": torch.full((2,), v)} for v in (1.0, 3.0, 2.0))
    for m, v in ((0.0, 4.0), (0.5, 3.0), (1.0, 2.0)):
        assert torch.equal(negative_state_dict(base, pos, npo, m)["w"], torch.full((2,), v))
    with pytest.raises(ConfigError, match="differ"):
        negative_state_dict(base, pos, {"v": torch.ones(2)})


def test_zero_offset_gives_the_positive_weights_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(5, generator=g), "n": torch.tensor([3])}
    pos = {"a": torch.randn(5, generator=g), "n": torch.tensor([3])}
    out = negative_state_dict(base, pos, {k: v.clone() for k, v in base.items()})
    assert all(torch.equal(out[k], pos[k]) for k in pos)


def test_merged_unet_folds_lora():
    policy = TinyDiffusionPolicy(sample_size=8, seed=0, lora_rank=4)
    policy.build()
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(1))
    plain = merged_unet(policy.unet)
    plain_keys = TinyDiffusionPolicy(sample_size=8, seed=0)
    plain_keys.build()
    assert plain.state_dict().keys() == plain_keys.unet.state_dict().keys()
    assert any("lora" in k for k in policy.unet.state_dict())  # the original keeps its adapters
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    embeds = policy.encode_prompt(["a red circle", ""])
    with torch.no_grad():
        lora_out = policy(x, t, embeds)
        assert_close(policy.unet_forward(plain, x, t, embeds), lora_out, rtol=1e-5, atol=1e-5)
        with policy.adapters_disabled():
            assert not torch.allclose(policy(x, t, embeds), lora_out, atol=1e-3)


@pytest.fixture
def three_policies():
    """base, a 'DPO' positive (other weights) and an 'NPO' negative trained from the base."""
    base = TinyDiffusionPolicy(sample_size=8, seed=0)
    base.build()
    positive, negative = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        for p, seed in ((positive, 1), (negative, 2)):
            gen = torch.Generator().manual_seed(seed)
            for w in p.unet.parameters():
                w.add_(0.05 * torch.randn(w.shape, generator=gen))
    return base, positive, negative


def test_equal_negative_weights_reduce_to_ordinary_cfg(three_policies):
    """NPO model = base (δ = 0) and m = 0: θ_neg = θ_pos bit for bit, so sampling with it is
    exactly two-forward CFG with the positive model in both branches, and ordinary (batched) CFG
    up to float summation order."""
    base, positive, _ = three_policies
    guidance = NegativeGuidance.from_policies(positive, base, copy.deepcopy(base))
    for key, value in guidance.unet.state_dict().items():
        assert torch.equal(value, positive.unet.state_dict()[key]), key
    caps = ["a red circle", "a blue square"]

    def run(**kw):
        return sample_images(positive, caps, torch.Generator().manual_seed(0), num_steps=3, **kw)

    with_neg, two_forward = run(uncond_denoiser=guidance), run(uncond_denoiser=positive)
    plain = run()
    assert torch.equal(with_neg, two_forward)
    assert_close(with_neg, plain, rtol=0, atol=1e-5)


def test_npo_offset_changes_samples_and_follows_the_blend(three_policies):
    """θ_neg = θ_pos + δ (m = 0) against θ_base + δ (m = 1): compare the weights by hand."""
    base, positive, negative = three_policies
    m0 = NegativeGuidance.from_policies(positive, base, negative)
    m1 = NegativeGuidance.from_policies(positive, base, negative, merge_weight=1.0)
    key = next(k for k, v in base.unet.state_dict().items() if v.is_floating_point())
    b, pos, npo = (p.unet.state_dict()[key] for p in (base, positive, negative))
    assert_close(m0.unet.state_dict()[key], pos + (npo - b), rtol=0, atol=1e-6)
    assert_close(m1.unet.state_dict()[key], npo, rtol=0, atol=1e-6)
    caps = ["a red circle"]
    gen = torch.Generator
    plain = sample_images(positive, caps, gen().manual_seed(0), num_steps=3)
    guided = sample_images(positive, caps, gen().manual_seed(0), num_steps=3, uncond_denoiser=m0)
    assert not torch.allclose(plain, guided, atol=1e-4)
