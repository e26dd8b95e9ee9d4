import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from lightning_pref.models.tiny import tiny_tokenizer
from lightning_pref.scoring import PickScore, PretrainedPickScore

CAPTIONS = ["a red circle", "blue square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    text = dict(
        vocab_size=514,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    with torch.no_grad():
        clip.logit_scale.fill_(torch.log(torch.tensor(100.0)))  # PickScore_v1's scale
    folder = tmp_path_factory.mktemp("tiny_clip")
    clip.save_pretrained(str(folder))
    tiny_tokenizer(16).save_pretrained(str(folder))
    return folder


def test_logit_scale_false_returns_the_raw_cosine(clip_dir):
    """scaled = exp(log 100) * cos = 100 * cos; raw = cos, inside [-1, 1]; scale on by default."""
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scaled = PickScore.from_pretrained(str(clip_dir))
    raw = PickScore.from_pretrained(str(clip_dir), logit_scale=False)
    with torch.no_grad():
        s_scaled, s_raw = scaled(images, CAPTIONS), raw(images, CAPTIONS)
        pixels = raw.preprocess(images)
        img = raw.image_features(pixels)
        txt = raw.text_features(CAPTIONS)
    cosine = torch.nn.functional.cosine_similarity(img, txt, dim=-1)  # [2]
    torch.testing.assert_close(s_raw, cosine, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_scaled, 100.0 * cosine, rtol=1e-5, atol=1e-4)
    assert s_raw.abs().max() <= 1.0


def test_pretrained_pickscore_passes_logit_scale(clip_dir):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    raw = PretrainedPickScore(str(clip_dir), None, logit_scale=False)
    scaled = PretrainedPickScore(str(clip_dir), None)
    with torch.no_grad():
        torch.testing.assert_close(100.0 * raw(images, CAPTIONS), scaled(images, CAPTIONS))
