import json
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from lightning_pref.errors import ModelLoadError
from lightning_pref.models.tiny import tiny_tokenizer
from lightning_pref.scoring import ClipPreprocess, CLIPScore

CAPTIONS = ["a red circle", "blue square", "x", "a cat", "zz top", "hello"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """openai/clip-vit-large-patch14's layout: weights, tokenizer and preprocessor together."""
    torch.manual_seed(0)
    common = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(common, vocab_size=514, max_position_embeddings=16)
    text |= dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(common, image_size=16, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    folder = tmp_path_factory.mktemp("tiny_clip_l14")
    clip.save_pretrained(str(folder))
    tiny_tokenizer(16).save_pretrained(str(folder))
    cfg = ClipPreprocess(20, 16).to_config()
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 24, 28, generator=g) * 2 - 1  # [N, 3, H, W]


def cosines(scorer: CLIPScore, images, captions):
    model = scorer.model
    pixels = model.preprocess(images)
    img = model.clip.visual_projection(model.clip.vision_model(pixel_values=pixels).pooler_output)
    return F.cosine_similarity(img, model.text_features(captions), dim=-1)  # [N]


def test_clip_score_is_100_cos_clamped_at_zero(clip_dir, images):
    """score_i = 100 * max(cos_i, 0) by hand from the projected CLIP features; some cosines of
    the random model are negative, so the clamp is exercised (those score exactly 0)."""
    scorer = CLIPScore(str(clip_dir))
    assert (scorer.model.preprocess.size, scorer.model.preprocess.crop_size) == (20, 16)
    with torch.no_grad():
        cos = cosines(scorer, images, CAPTIONS)
        got = scorer(images, CAPTIONS)
    assert (cos < 0).any() and (cos > 0).any()
    torch.testing.assert_close(got, 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    assert torch.equal(got[cos < 0], torch.zeros(int((cos < 0).sum())))
    assert not any(p.requires_grad for p in scorer.parameters())


def test_weight_and_clamp_options(clip_dir, images):
    """CLIP-S (Hessel et al.): w = 2.5; clamp=False keeps negative values: 2.5 * cos."""
    raw = CLIPScore(str(clip_dir), weight=2.5, clamp=False)
    with torch.no_grad():
        cos = cosines(raw, images, CAPTIONS)
        torch.testing.assert_close(raw(images, CAPTIONS), 2.5 * cos, rtol=1e-5, atol=1e-6)


def test_prefers_the_matching_caption(clip_dir):
    """Direction: aligning the image embedding with caption 0 raises its score above others."""
    scorer = CLIPScore(str(clip_dir), clamp=False)
    x = torch.zeros(1, 3, 16, 16, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        (-scorer(x.tanh(), CAPTIONS[:1]).sum()).backward()
        opt.step()
    with torch.no_grad():
        after = scorer(x.tanh().expand(2, -1, -1, -1), CAPTIONS[:2])
        before = scorer(torch.zeros(1, 3, 16, 16), CAPTIONS[:1])
    assert after[0] > before[0] + 1.0
    assert after[0] > after[1]


def test_offline_hub_id_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        CLIPScore()
    assert time.perf_counter() - start < 10
    assert "\n" not in str(err.value)
    assert "hf download openai/clip-vit-large-patch14 --local-dir DIR" in str(err.value)
