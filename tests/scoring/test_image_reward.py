import json
import re
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertTokenizer,
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
)

from lightning_pref.errors import ModelLoadError
from lightning_pref.scoring import ImageReward, RewardMLP, convert_image_reward_state_dict
from lightning_pref.scoring.image_reward import IMAGE_REWARD_MEAN, IMAGE_REWARD_STD

CAPTIONS = ["a red cat", "blue squares", "a cat"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "blue", "square", "##s"]
DV, HEADS_V, DT = 48, 3, 32  # ViT width (16-wide heads), BERT width
MED = dict(
    architectures=["BertModel"],
    hidden_size=DT,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=40,
    vocab_size=len(VOCAB),
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    pad_token_id=0,
    type_vocab_size=2,
    encoder_width=DV,
    add_cross_attention=True,
)


def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    vision = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=DV,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=HEADS_V,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
        )
    ).eval()
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    text_cfg = BlipTextConfig(
        **{k: MED[k] for k in (*keys, "max_position_embeddings", "vocab_size")},
        encoder_hidden_size=DV,
        is_decoder=True,
    )
    text = BlipTextModel(text_cfg, add_pooling_layer=False).eval()
    head = RewardMLP(DT).eval()
    with torch.no_grad():
        for p in (*vision.parameters(), *text.parameters()):
            p.add_(torch.randn(p.shape) * 0.05)  # break init symmetries (zero biases, unit LN)
    return vision, text, head


_VIT_BACK = (  # transformers BlipVisionModel -> BLIP ViT names, written independently
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
)


def to_image_reward(vision, text, head) -> dict[str, torch.Tensor]:
    """ImageReward.pt layout: blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*."""
    out = {}
    for key, value in vision.state_dict().items():
        for pattern, repl in _VIT_BACK:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[f"blip.visual_encoder.{key}"] = value.clone()
    out |= {f"blip.text_encoder.{k}": v.clone() for k, v in text.state_dict().items()}
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    out["blip.vision_proj.weight"] = torch.zeros(4, DV)  # saved by BLIP, unused by the score
    out |= {f"mlp.{k}": v.clone() for k, v in head.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_reward")
    torch.save(to_image_reward(*tiny_parts()), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED))
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def scorer(reward_dir, bert_dir):
    return ImageReward(str(reward_dir), str(bert_dir), vision_heads=HEADS_V)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 40, 48, generator=g) * 1.8 - 0.9  # [N, 3, H, W] inside [-1, 1]


def blip_vit_reference(sd, pixels):
    """BLIP's timm-style ViT on the original tensors: fused qkv split per head, pre-norm blocks."""
    p = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], 8)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], 1, DV), x.flatten(2).transpose(1, 2)], 1)
    x = x + sd[p + "pos_embed"]
    for i in range(2):
        b = f"{p}blocks.{i}."
        h = F.layer_norm(x, (DV,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(*x.shape[:2], 3, HEADS_V, DV // HEADS_V).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (DV // HEADS_V) ** -0.5).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(h, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (DV,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])  # fmt: skip
        x = x + h
    return F.layer_norm(x, (DV,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6)


# ---------------------------------------------------------------- conversion
def test_converted_vit_matches_blip_reference(reward_dir, images, scorer):
    """The renamed ViT equals a BLIP-style forward on the original tensors (fused qkv rows are
    [q; k; v], heads contiguous inside each), token by token."""
    sd = torch.load(reward_dir / "ImageReward.pt", weights_only=True)
    pixels = scorer.preprocess(images)
    with torch.no_grad():
        got = scorer.vision(pixel_values=pixels).last_hidden_state  # [N, 1 + 16, DV]
    torch.testing.assert_close(got, blip_vit_reference(sd, pixels), rtol=1e-5, atol=1e-5)


def test_convert_splits_and_drops_keys(reward_dir):
    sd = torch.load(reward_dir / "ImageReward.pt", weights_only=True)
    vision, text, head = convert_image_reward_state_dict(sd)
    parts = tiny_parts()
    assert set(vision) == set(parts[0].state_dict())
    assert set(text) == set(parts[1].state_dict())  # position_ids buffer dropped
    assert set(head) == {f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")}
    with pytest.raises(KeyError, match="visual_encoder.blocks.0.ls1.gamma"):
        convert_image_reward_state_dict(
            {"blip.visual_encoder.blocks.0.ls1.gamma": sd["mlp.layers.0.bias"]}
        )


# ---------------------------------------------------------------- score
def test_score_equals_the_original_modules(scorer, images):
    """(head(BERT(ids, cross-attending to ViT tokens)[:, 0]) - mean) / std, with the modules the
    checkpoint was written from; [CLS] first, padded to 35 tokens."""
    vision, text, head = tiny_parts()
    tokens = scorer.tokenizer(CAPTIONS, padding="max_length", max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (3, 35) and (tokens["input_ids"][:, 0] == 2).all()
    with torch.no_grad():
        img = vision(pixel_values=scorer.preprocess(images)).last_hidden_state
        out = text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long),
        ).last_hidden_state[:, 0]
        expected = (head(out) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
        got = scorer(images, CAPTIONS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in scorer.parameters())


def test_normalisation_constants(scorer, images):
    """A head that always outputs 1.2: (1.2 - 0.16717362830052426) / 1.0333394966054072
    = 1.03282637169947574 / 1.0333394966054072 = 0.9995034..."""
    head = RewardMLP(DT)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.layers[7].bias.fill_(1.2)
        original, scorer.head = scorer.head, head
        try:
            got = scorer(images, CAPTIONS)
        finally:
            scorer.head = original
    torch.testing.assert_close(got, torch.full((3,), 0.99950340), rtol=0, atol=1e-6)


def test_image_and_caption_both_matter(scorer, images):
    with torch.no_grad():
        base = scorer(images, CAPTIONS)
        other_image = scorer(images.flip(0), CAPTIONS)
        other_caption = scorer(images, CAPTIONS[::-1])
    assert (base[[0, 2]] - other_image[[0, 2]]).abs().min() > 1e-4  # cross-attention is live
    assert (base[[0, 2]] - other_caption[[0, 2]]).abs().min() > 1e-4


# ---------------------------------------------------------------- errors
def test_load_errors_are_one_line(reward_dir, bert_dir, tmp_path, monkeypatch):
    (tmp_path / "med_config.json").write_text(json.dumps(MED))
    with pytest.raises(ModelLoadError, match="has no ImageReward.pt"):
        ImageReward(str(tmp_path), str(bert_dir))
    with pytest.raises(ModelLoadError, match="has no tokenizer.json or vocab.txt"):
        ImageReward(str(reward_dir), str(tmp_path), vision_heads=HEADS_V)
    with pytest.raises(ModelLoadError, match="does not match the ImageReward layout"):
        ImageReward(str(reward_dir), str(bert_dir), vision_heads=5)  # 48 not divisible by 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        ImageReward()
    assert time.perf_counter() - start < 10
    assert "\n" not in str(err.value)
    assert "hf download THUDM/ImageReward --local-dir DIR" in str(err.value)
