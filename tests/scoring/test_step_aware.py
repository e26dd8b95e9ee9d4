import copy
import json
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.models.tiny import tiny_tokenizer
from lightning_pref.scoring import (
    ClipPreprocess,
    PickScore,
    StepAwarePickScore,
    split_spo_state_dict,
)
from lightning_pref.scoring.step_aware import MODULATION_FILE, timestep_sinusoid

CAPTIONS = ["a red circle", "blue square", "x"]
D = 32  # vision hidden size


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    text = dict(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    tiny_clip().save_pretrained(str(folder))
    tiny_tokenizer(16).save_pretrained(str(folder))
    return folder


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 40, 48, generator=g) * 1.8 - 0.9  # [N, 3, H, W] inside [-1, 1]


def perturb(modulation, scale: float = 0.3, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in modulation.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def cos_score(scorer, img_emb, captions):
    txt = scorer.text_features(captions)
    img = img_emb / img_emb.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return scorer.clip.logit_scale.exp() * (img * txt).sum(-1)


# ---------------------------------------------------------------- (1) identity at init
def test_pickscore_equals_clip_logits_diagonal(clip_dir, images):
    """PickScore(i) = exp(logit_scale) cos(img_i, txt_i) = CLIPModel's logits_per_image[i, i]."""
    scorer = PickScore.from_pretrained(str(clip_dir))
    pixels = scorer.preprocess(images)
    ids, mask = scorer.tokenize(CAPTIONS)
    with torch.no_grad():
        out = scorer.clip(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        scores = scorer(images, CAPTIONS)
    torch.testing.assert_close(scores, out.logits_per_image.diagonal(), rtol=1e-6, atol=1e-6)
    assert scores.shape == (3,)
    assert not torch.allclose(scores, scores[0].expand(3))  # captions/images matter


@pytest.mark.parametrize("t", [None, 0, 500, torch.tensor([0, 251, 951])])
def test_fresh_step_aware_equals_pickscore(clip_dir, images, t):
    plain = PickScore.from_pretrained(str(clip_dir))
    spm = StepAwarePickScore.from_pretrained(str(clip_dir), antialias=True)
    assert not (clip_dir / MODULATION_FILE).exists()
    with torch.no_grad():
        assert torch.equal(spm(images, CAPTIONS, t), plain(images, CAPTIONS))


def test_fresh_modulation_bias_layout():
    """Gates (chunks 2 and 5 of shift, scale, gate, shift, scale, gate) are 1, the rest 0."""
    spm = StepAwarePickScore(tiny_clip(), tiny_tokenizer(16))
    bias = spm.modulation.layers[0][1].bias.detach()
    expected = torch.zeros(6 * D)
    expected[2 * D : 3 * D] = 1
    expected[5 * D :] = 1
    assert torch.equal(bias, expected)
    assert torch.equal(spm.modulation.pooled[1].bias.detach(), torch.zeros(2 * D))
    assert all(not h[1].weight.any() for h in (*spm.modulation.layers, spm.modulation.pooled))


# ---------------------------------------------------------------- (2) timestep dependence
def test_sinusoid_values():
    """t=0: cos 0 = 1 (128x), sin 0 = 0 (128x). t=1, k=1: f_1 = 10000^(-1/128) = 0.930572,
    cos f_1 = 0.597375, sin f_1 = 0.801962."""
    emb = timestep_sinusoid(torch.tensor([0.0, 1.0]))
    assert emb.shape == (2, 256)
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    torch.testing.assert_close(emb[1, 1], torch.tensor(0.5973753), rtol=0, atol=1e-6)
    torch.testing.assert_close(emb[1, 129], torch.tensor(0.8019618), rtol=0, atol=1e-6)


def test_zero_gates_skip_the_layer(clip_dir, images):
    """Gates 0 in layer 0 (biases [2D:3D], [5D:] = 0, weights 0): h -> h + 0*attn + 0*mlp."""
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    with torch.no_grad():
        spm.modulation.layers[0][1].bias.zero_()
        pixels = spm.preprocess(images)
        got = spm.image_features(pixels, torch.tensor(300))
        v = spm.clip.vision_model
        h = v.pre_layrnorm(v.embeddings(pixels))
        h = v.encoder.layers[1](h, None)  # hooks are inactive outside image_features
        expected = spm.clip.visual_projection(v.post_layernorm(h[:, 0]))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_layer_modulation_exact(clip_dir, images):
    """Layer 0 with random heads, by hand: s1, c1, g1, s2, c2, g2 = head(c_t).chunk(6);
    h += g1 * attn(LN1(h) * (1 + c1) + s1); h += g2 * mlp(LN2(h) * (1 + c2) + s2)."""
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    head = spm.modulation.layers[0][1]
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([3, 600, 999])
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.3)
        head.bias.add_(torch.randn(head.bias.shape, generator=g) * 0.3)
        pixels = spm.preprocess(images)
        got = spm.image_features(pixels, t)
        s1, c1, g1, s2, c2, g2 = (
            x.unsqueeze(1) for x in spm.modulation.layers[0](spm.modulation.embed(t)).chunk(6, -1)
        )
        v = spm.clip.vision_model
        layer = v.encoder.layers[0]
        h = v.pre_layrnorm(v.embeddings(pixels))  # [N, T, D]
        h = h + g1 * layer.self_attn(layer.layer_norm1(h) * (1 + c1) + s1)[0]
        h = h + g2 * layer.mlp(layer.layer_norm2(h) * (1 + c2) + s2)
        h = v.encoder.layers[1](h, None)
        expected = spm.clip.visual_projection(v.post_layernorm(h[:, 0]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got - spm.image_features(pixels, torch.zeros(3))).abs().max() > 1e-3


def test_pooled_modulation_exact(clip_dir, images):
    """Only the pooled head is non-zero: pooled' = pooled * (1 + scale_t) + shift_t."""
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        spm.modulation.pooled[1].weight.copy_(torch.randn(2 * D, D, generator=g) * 0.5)
        t = torch.tensor([0, 400, 900])
        pixels = spm.preprocess(images)
        pooled = spm.clip.vision_model(pixel_values=pixels).pooler_output  # plain CLIP
        shift, scale = spm.modulation.pooled(spm.modulation.embed(t)).chunk(2, dim=-1)
        expected = cos_score(
            spm, spm.clip.visual_projection(pooled * (1 + scale) + shift), CAPTIONS
        )
        got = spm(images, CAPTIONS, t)
        at_zero = spm(images, CAPTIONS, torch.zeros(3))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[1:] - at_zero[1:]).abs().min() > 1e-3
    assert torch.equal(spm(images, CAPTIONS), at_zero)  # None means t = 0


def test_scores_depend_on_timestep_per_sample(clip_dir, images):
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    perturb(spm.modulation)
    with torch.no_grad():
        early, late = spm(images, CAPTIONS, 0), spm(images, CAPTIONS, 999)
        mixed = spm(images, CAPTIONS, torch.tensor([0, 999, 0]))
        plain = PickScore.from_pretrained(str(clip_dir))(images, CAPTIONS)
    assert (early - late).abs().min() > 1e-3
    assert (early - plain).abs().min() > 1e-3
    torch.testing.assert_close(mixed, torch.stack([early[0], late[1], early[2]]))
    clone = copy.deepcopy(spm)  # e.g. a frozen reference copy: hooks must follow the copy
    perturb(clone.modulation, seed=9)
    with torch.no_grad():
        assert torch.equal(spm(images, CAPTIONS, 999), late)
        assert (clone(images, CAPTIONS, 999) - late).abs().min() > 1e-3


# ---------------------------------------------------------------- (3) save / load
def test_save_load_round_trip(clip_dir, images, tmp_path):
    pre = ClipPreprocess(36, 32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    spm = StepAwarePickScore(spm.clip, spm.tokenizer, pre, spm.modulation)
    perturb(spm.modulation)
    out = spm.save_pretrained(tmp_path / "spm")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        MODULATION_FILE,
        "preprocessor_config.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    loaded = StepAwarePickScore.from_pretrained(str(out))
    assert (loaded.preprocess.size, loaded.preprocess.crop_size) == (36, 32)
    torch.testing.assert_close(loaded.preprocess.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        assert torch.equal(loaded(images, CAPTIONS, t), spm(images, CAPTIONS, t))
    (out / MODULATION_FILE).unlink()  # without the file: a fresh modulation
    fresh = StepAwarePickScore.from_pretrained(str(out))
    plain = PickScore.from_pretrained(str(out), antialias=False)
    with torch.no_grad():
        assert torch.equal(fresh(images, CAPTIONS, t), plain(images, CAPTIONS))


def test_mismatched_modulation_file_is_one_line_error(clip_dir, tmp_path):
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    out = spm.save_pretrained(tmp_path / "spm")
    from safetensors.torch import save_file

    save_file({"timestep_mlp.0.weight": torch.zeros(3, 3)}, str(out / MODULATION_FILE))
    with pytest.raises(ModelLoadError, match="does not match the CLIP vision tower") as err:
        StepAwarePickScore.from_pretrained(str(out))
    assert "\n" not in str(err.value)


def test_split_spo_state_dict_maps_keys():
    spm = StepAwarePickScore(tiny_clip(), tiny_tokenizer(16))
    clip_sd, mod_sd = spm.clip.state_dict(), spm.modulation.state_dict()
    spo = {f"model.{k}": v for k, v in clip_sd.items()}
    spo["model.t_embedder.mlp.0.weight"] = mod_sd["timestep_mlp.0.weight"]
    spo["model.t_embedder.mlp.2.bias"] = mod_sd["timestep_mlp.2.bias"]
    spo["model.vision_model.encoder.layers.1.adaLN_modulation.1.bias"] = mod_sd["layers.1.1.bias"]
    spo["model.vision_model.adaLN_modulation.1.weight"] = mod_sd["pooled.1.weight"]
    got_clip, got_mod = split_spo_state_dict(spo)
    assert set(got_clip) == set(clip_sd)
    assert set(got_mod) == {
        "timestep_mlp.0.weight",
        "timestep_mlp.2.bias",
        "layers.1.1.bias",
        "pooled.1.weight",
    }
    assert got_mod["layers.1.1.bias"] is mod_sd["layers.1.1.bias"]


# ---------------------------------------------------------------- (4) errors
@pytest.mark.parametrize(
    ("cls", "kwargs", "hub_id"),
    [
        (StepAwarePickScore, {}, "SPO-Diffusion-Models/Step-Aware_Preference_Models"),
        (PickScore, {}, "yuvalkirstain/PickScore_v1"),
        (PickScore, {"processor_path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}, None),
    ],
)
def test_offline_hub_id_is_one_line_error(clip_dir, monkeypatch, cls, kwargs, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = hub_id or kwargs["processor_path"]
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        cls.from_pretrained(hub_id or str(clip_dir), **kwargs)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "\n" not in msg
    assert f"hf download {name} --local-dir DIR" in msg
    assert "pass DIR instead" in msg


def test_cached_hub_ids_load_offline(clip_dir, images, tmp_path, monkeypatch):
    """A hub id found in the HF cache (``models--org--name/snapshots/<sha>``) loads offline."""
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    sha = "0" * 40
    for repo in ("org--clip", "org--processor"):
        (tmp_path / f"models--{repo}" / "refs").mkdir(parents=True)
        (tmp_path / f"models--{repo}" / "refs" / "main").write_text(sha)
        shutil.copytree(clip_dir, tmp_path / f"models--{repo}" / "snapshots" / sha)
    scorer = StepAwarePickScore.from_pretrained("org/clip", processor_path="org/processor")
    with torch.no_grad():
        expected = PickScore.from_pretrained(str(clip_dir), antialias=False)(images, CAPTIONS)
        assert torch.equal(scorer(images, CAPTIONS, 7), expected)


def test_local_errors(clip_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        StepAwarePickScore.from_pretrained(str(tmp_path / "nope"))
    only_model = tmp_path / "no_tokenizer"
    tiny_clip().save_pretrained(str(only_model))
    with pytest.raises(ModelLoadError, match="pass processor_path"):
        PickScore.from_pretrained(str(only_model))
    scorer = PickScore.from_pretrained(str(only_model), processor_path=str(clip_dir))
    assert scorer.max_length == 16
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        scorer(torch.zeros(3, 3, 32, 32), CAPTIONS[:2])


def test_gradient_checkpointing_is_refused(clip_dir, images):
    spm = StepAwarePickScore.from_pretrained(str(clip_dir))
    enable = getattr(spm.clip, "activation_checkpointing_enable", None)
    (enable or spm.clip.gradient_checkpointing_enable)()
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        spm(images, CAPTIONS, 10)


# ---------------------------------------------------------------- (5) preprocessing
def test_preprocess_crop_and_normalise_hand_value():
    """32x48 ramp, size 32: no resize, crop columns 8..39. Column 8 is 8/47*2-1 -> [0, 1]: 8/47;
    channel 0: (8/47 - 0.48145466) / 0.26862954 = -1.1586287."""
    ramp = torch.arange(48.0) / 47 * 2 - 1
    image = ramp.expand(1, 3, 32, 48)
    out = ClipPreprocess(32)(image)
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out[0, 0, 5, 0], torch.tensor(-1.1586287), rtol=0, atol=1e-6)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = ((ramp[8:40] + 1) / 2 - mean[:, None]) / std[:, None]  # [3, 32]
    torch.testing.assert_close(out[0, :, 7], expected, rtol=0, atol=1e-6)
    tall = ClipPreprocess(32)(image.transpose(-1, -2))  # 48x32: crop rows 8..39
    assert torch.equal(tall, out.transpose(-1, -2))


def test_preprocess_resizes_short_side_and_centers():
    """40x56 -> short side 32: (32, int(56*0.8+0.5) = 45), crop left (45-32)//2 = 6.
    A constant 0.2 stays 0.2 -> 0.6 -> channel 0: (0.6-0.48145466)/0.26862954 = 0.4412967."""
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pre = ClipPreprocess(32)
    ref = F.interpolate(x, size=(32, 45), mode="bicubic", align_corners=False)[..., :, 6:38]
    ref = ((ref + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(pre(x), (ref - pre.mean) / pre.std)
    const = pre(torch.full((1, 3, 64, 64), 0.2))
    torch.testing.assert_close(const[0, 0], torch.full((32, 32), 0.4412967), rtol=0, atol=1e-5)


def test_preprocess_reads_processor_config(clip_dir, tmp_path):
    cfg = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
    cfg |= {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    tiny_tokenizer(16).save_pretrained(str(tmp_path))
    scorer = PickScore.from_pretrained(str(clip_dir), processor_path=str(tmp_path))
    assert (scorer.preprocess.size, scorer.preprocess.crop_size) == (40, 32)
    assert torch.equal(scorer.preprocess(torch.zeros(1, 3, 50, 40)), torch.zeros(1, 3, 32, 32))
    default = PickScore.from_pretrained(str(clip_dir)).preprocess
    assert (default.size, default.crop_size) == (32, 32)  # vision_config.image_size


# ---------------------------------------------------------------- (6) gradients
def test_gradients_reach_modulation_and_images(clip_dir, images):
    spm = StepAwarePickScore.from_pretrained(str(clip_dir)).double()
    x = images.double().requires_grad_(True)
    spm(x, CAPTIONS, torch.tensor([10, 500, 900])).sum().backward()
    mod = spm.modulation
    assert all(h[1].weight.grad.abs().sum() > 0 for h in (*mod.layers, mod.pooled))
    # zero head weights at init: no gradient reaches the timestep MLP yet (as in adaLN-Zero)
    assert all(p.grad.abs().sum() == 0 for p in mod.timestep_mlp.parameters())
    assert x.grad.abs().sum() > 0
    # the image gradient is the true derivative: central difference along a random direction
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        t = torch.tensor([10, 500, 900])
        up, down = spm(x + h * v, CAPTIONS, t).sum(), spm(x - h * v, CAPTIONS, t).sum()
    torch.testing.assert_close((x.grad * v).sum(), (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


def test_gradients_reach_timestep_mlp_after_training_starts(clip_dir, images):
    spm = StepAwarePickScore.from_pretrained(str(clip_dir)).double()
    perturb(spm.modulation, scale=0.05)
    spm(images.double(), CAPTIONS, torch.tensor([10, 500, 900])).sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in spm.modulation.timestep_mlp.parameters())
