import time

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from lightning_pref.errors import ModelLoadError
from lightning_pref.models.tiny import tiny_tokenizer
from lightning_pref.scoring import HPSv2, convert_open_clip_state_dict, open_clip_config
from lightning_pref.scoring.hps import HPS_FILE, pad_to_square

CAPTIONS = ["a red circle", "blue square", "x"]
W, HEADS = 32, 2


def tiny_clip(seed: int = 0) -> CLIPModel:
    """A ViT-H-14-shaped CLIP in miniature: exact GELU, argmax (eos_token_id=2) pooling."""
    torch.manual_seed(seed)
    common = dict(hidden_size=W, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(common, vocab_size=514, max_position_embeddings=16, hidden_act="gelu")
    text |= dict(eos_token_id=2, bos_token_id=512, pad_token_id=513)
    vision = dict(common, image_size=32, patch_size=8, hidden_act="gelu")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    clip = CLIPModel(config).eval()
    with torch.no_grad():  # make LayerNorm affine parameters non-trivial
        for name, p in clip.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape) * 0.1)
    return clip


def to_open_clip(clip: CLIPModel) -> dict[str, torch.Tensor]:
    """The inverse of the converter, written independently: transformers -> open_clip names."""
    sd = clip.state_dict()
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": sd["logit_scale"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t(),
    }
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        for i in range(2):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                qkv = [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
                for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1")):
                    out[f"{dst}{a}.{kind}"] = sd[f"{src}{b}.{kind}"]
                for a, b in (("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1")):
                    out[f"{dst}{a}.{kind}"] = sd[f"{src}{b}.{kind}"]
                out[f"{dst}mlp.c_proj.{kind}"] = sd[f"{src}mlp.fc2.{kind}"]
    return {k: v.clone() for k, v in out.items()}


# ---------------------------------------------------------------- open_clip reference forward
def _resblock(x, sd, p, mask=None):
    """open_clip ResidualAttentionBlock (batch-first): x += attn(ln_1 x); x += mlp(ln_2 x)."""
    h = F.layer_norm(x, (W,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
    attn = torch.nn.MultiheadAttention(W, HEADS, batch_first=True)
    attn.load_state_dict(
        {
            "in_proj_weight": sd[p + "attn.in_proj_weight"],
            "in_proj_bias": sd[p + "attn.in_proj_bias"],
            "out_proj.weight": sd[p + "attn.out_proj.weight"],
            "out_proj.bias": sd[p + "attn.out_proj.bias"],
        }
    )
    x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = F.layer_norm(x, (W,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
    h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
    return x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])


def open_clip_image(sd, pixels):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, W)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (W,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(2):
        x = _resblock(x, sd, f"visual.transformer.resblocks.{i}.")
    x = F.layer_norm(x[:, 0], (W,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x @ sd["visual.proj"]


def open_clip_text(sd, ids):
    n = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)  # causal, as open_clip's attn_mask
    for i in range(2):
        x = _resblock(x, sd, f"transformer.resblocks.{i}.", mask)
    x = F.layer_norm(x, (W,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


@pytest.fixture(scope="module")
def open_clip_sd():
    return to_open_clip(tiny_clip())


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory, open_clip_sd):
    """The real layout: {"state_dict": open_clip weights} in HPS_v2.1_compressed.pt."""
    folder = tmp_path_factory.mktemp("hps")
    torch.save({"state_dict": open_clip_sd}, folder / HPS_FILE)
    return folder


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps_processor")
    tiny_tokenizer(16).save_pretrained(str(folder))
    return folder


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=g) * 1.8 - 0.9  # [N, 3, H, W] inside [-1, 1]


# ---------------------------------------------------------------- converter
def test_converter_round_trip_restores_every_tensor(open_clip_sd):
    clip = tiny_clip()
    converted = convert_open_clip_state_dict({f"module.{k}": v for k, v in open_clip_sd.items()})
    assert set(converted) == set(clip.state_dict())
    for key, value in clip.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_converted_model_matches_an_open_clip_forward(open_clip_sd, images):
    """Features of the converted CLIPModel equal an independent open_clip-style forward that
    uses the open_clip tensors directly (nn.MultiheadAttention on in_proj_weight, x @ proj)."""
    clip = CLIPModel(open_clip_config(open_clip_sd, vision_heads=HEADS, text_heads=HEADS)).eval()
    clip.load_state_dict(convert_open_clip_state_dict(open_clip_sd))
    ids = torch.tensor([[512, 5, 9, 513, 513], [512, 7, 513, 513, 513]])  # EOT 513 is max id
    with torch.no_grad():
        img = clip.visual_projection(clip.vision_model(pixel_values=images).pooler_output)
        txt = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(img, open_clip_image(open_clip_sd, images))
        torch.testing.assert_close(txt, open_clip_text(open_clip_sd, ids))
        assert (img - open_clip_image(to_open_clip(tiny_clip(1)), images)).abs().max() > 1e-2


def test_open_clip_config_reads_shapes(open_clip_sd):
    cfg = open_clip_config(open_clip_sd, vision_heads=4, text_heads=2)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (32, 2, 4)
    assert (v.image_size, v.patch_size, v.intermediate_size, v.hidden_act) == (32, 8, 64, "gelu")
    assert (t.vocab_size, t.max_position_embeddings, t.num_hidden_layers) == (514, 16, 2)
    assert (cfg.projection_dim, t.eos_token_id) == (16, 2)


def test_converter_rejects_unknown_keys(open_clip_sd):
    with pytest.raises(KeyError, match="visual.attnpool.q_proj.weight"):
        convert_open_clip_state_dict({"visual.attnpool.q_proj.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="ls_1.gamma"):
        convert_open_clip_state_dict({"transformer.resblocks.0.ls_1.gamma": torch.zeros(1)})
    assert convert_open_clip_state_dict({"attn_mask": torch.zeros(2, 2)}) == {}


# ---------------------------------------------------------------- scorer
def test_hps_is_the_open_clip_cosine(hps_dir, processor_dir, open_clip_sd, images):
    """HPS = diag(normalize(img) @ normalize(txt).T), from the .pt file in the real layout."""
    hps = HPSv2(str(hps_dir), str(processor_dir), vision_heads=HEADS, text_heads=HEADS)
    tokens = hps.model.tokenizer(CAPTIONS, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        scores = hps(images, CAPTIONS)
        img = F.normalize(open_clip_image(open_clip_sd, hps.model.preprocess(images)), dim=-1)
        txt = F.normalize(open_clip_text(open_clip_sd, tokens), dim=-1)
    torch.testing.assert_close(scores, (img @ txt.T).diagonal(), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in hps.parameters())
    direct = HPSv2(str(hps_dir / HPS_FILE), str(processor_dir), vision_heads=2, text_heads=2)
    with torch.no_grad():
        assert torch.equal(direct(images, CAPTIONS), scores)


def test_save_pretrained_reloads_as_transformers_folder(hps_dir, processor_dir, images, tmp_path):
    hps = HPSv2(str(hps_dir), str(processor_dir), vision_heads=HEADS, text_heads=HEADS)
    out = hps.save_pretrained(tmp_path / "hps_hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    reloaded = HPSv2(str(out), processor_path=None)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images, CAPTIONS), hps(images, CAPTIONS))


def test_pad_to_square_hand_values():
    """2x4 image of ones -> 4x4: rows 0 and 3 are fill (-1), rows 1-2 ones; 3x4 -> pad 0 top,
    1 bottom (the extra pixel goes last, as ResizeMaxSize's pad_h - pad_h // 2)."""
    padded = pad_to_square(torch.ones(1, 3, 2, 4))
    assert padded.shape == (1, 3, 4, 4)
    assert torch.equal(padded[0, 0, :, 0], torch.tensor([-1.0, 1.0, 1.0, -1.0]))
    odd = pad_to_square(torch.ones(1, 1, 3, 4))
    assert torch.equal(odd[0, 0, :, 0], torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert torch.equal(pad_to_square(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_non_square_images_are_padded_not_cropped(hps_dir, processor_dir):
    """A 32x48 image scores as its black-padded 48x48 square; pad_to_square=False crops."""
    hps = HPSv2(str(hps_dir), str(processor_dir), vision_heads=HEADS, text_heads=HEADS)
    wide = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        got = hps(wide, CAPTIONS[:2])
        assert torch.equal(got, hps.model(pad_to_square(wide), CAPTIONS[:2]))
        assert (got - hps.model(wide, CAPTIONS[:2])).abs().max() > 1e-4


# ---------------------------------------------------------------- errors
def test_load_errors_are_one_line(hps_dir, processor_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="neither a transformers CLIP"):
        HPSv2(str(tmp_path), str(processor_dir))
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.weird": torch.zeros(1)}}, bad)
    with pytest.raises(ModelLoadError, match="not an open_clip ViT CLIP checkpoint"):
        HPSv2(str(bad), str(processor_dir))
    with pytest.raises(ModelLoadError, match="no tokenizer.json or vocab.json"):
        HPSv2(str(hps_dir), str(hps_dir), vision_heads=HEADS, text_heads=HEADS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        HPSv2()
    assert time.perf_counter() - start < 10
    assert "\n" not in str(err.value)
    assert "hf download xswu/HPSv2 --local-dir DIR" in str(err.value)
