import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from lightning_pref.errors import ModelLoadError
from lightning_pref.scoring import LAIONAesthetic, RewardMLP
from lightning_pref.scoring.aesthetic import AESTHETIC_HEAD_FILE

P = 16  # projection width (768 for CLIP-L/14)
HEAD_KEYS = {f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    common = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(common, vocab_size=514, max_position_embeddings=16)
    text |= dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(common, image_size=16, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=P))
    folder = tmp_path_factory.mktemp("tiny_clip_l14")
    clip.save_pretrained(str(folder))  # no tokenizer: the aesthetic score never reads captions
    return folder


@pytest.fixture(scope="module")
def head_state():
    torch.manual_seed(1)
    return {k: v.clone() for k, v in RewardMLP(P).state_dict().items()}


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory, head_state):
    """The real file: a torch.save'd state_dict named sac+logos+ava1-l14-linearMSE.pth."""
    folder = tmp_path_factory.mktemp("aesthetic_head")
    torch.save(head_state, folder / AESTHETIC_HEAD_FILE)
    return folder


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, 3, 20, 24, generator=g) * 2 - 1  # [N, 3, H, W]


def test_head_keys_match_the_release():
    assert set(RewardMLP(768).state_dict()) == HEAD_KEYS
    assert RewardMLP(768).layers[0].weight.shape == (1024, 768)


def test_head_is_linear_chain_by_hand(head_state):
    """No activations: y = W7 (W6 (W4 (W2 (W0 x + b0) + b2) + b4) + b6) + b7."""
    head = RewardMLP(P).eval()
    head.load_state_dict(head_state)
    x = torch.randn(4, P, generator=torch.Generator().manual_seed(3))
    y = x
    for i in (0, 2, 4, 6, 7):
        y = F.linear(y, head_state[f"layers.{i}.weight"], head_state[f"layers.{i}.bias"])
    with torch.no_grad():
        torch.testing.assert_close(head(x), y.squeeze(-1))


def test_score_is_head_of_normalised_embedding(clip_dir, head_dir, head_state, images):
    """score = head(e / ||e||), e = visual_projection(pooled); captions are ignored."""
    scorer = LAIONAesthetic(str(head_dir), str(clip_dir))
    clip = CLIPModel.from_pretrained(str(clip_dir)).eval()
    head = RewardMLP(P).eval()
    head.load_state_dict(head_state)
    with torch.no_grad():
        pixels = scorer.preprocess(images)
        emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        expected = head(emb / emb.norm(dim=-1, keepdim=True))
        got = scorer(images, ["a", "b", "c"])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(scorer(images, ["", "x", "yy"]), got)
        assert (got - got[0]).abs().max() > 1e-5  # images matter
    assert not any(p.requires_grad for p in scorer.parameters())


def test_score_ignores_the_embedding_norm(clip_dir, head_dir, images):
    """The L2 normalisation: scaling the projection by 7 leaves the score unchanged."""
    scorer = LAIONAesthetic(str(head_dir), str(clip_dir))
    with torch.no_grad():
        before = scorer(images, ["", "", ""])
        scorer.visual_projection.weight.mul_(7.0)
        torch.testing.assert_close(scorer(images, ["", "", ""]), before, rtol=1e-5, atol=1e-6)


def test_safetensors_and_file_paths_load_the_same(clip_dir, head_dir, head_state, tmp_path):
    save_file(head_state, str(tmp_path / "aesthetic.safetensors"))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ref = LAIONAesthetic(str(head_dir), str(clip_dir))
    by_file = LAIONAesthetic(str(head_dir / AESTHETIC_HEAD_FILE), str(clip_dir))
    by_st = LAIONAesthetic(str(tmp_path), str(clip_dir))  # folder with one weights file
    with torch.no_grad():
        expected = ref(images, ["", ""])
        assert torch.equal(by_file(images, ["", ""]), expected)
        assert torch.equal(by_st(images, ["", ""]), expected)


def test_load_errors_are_one_line(clip_dir, head_state, tmp_path, monkeypatch):
    wrong = {k.replace("layers.", "mlp."): v for k, v in head_state.items()}
    torch.save(wrong, tmp_path / AESTHETIC_HEAD_FILE)
    with pytest.raises(ModelLoadError, match="is not an aesthetic head"):
        LAIONAesthetic(str(tmp_path), str(clip_dir))
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": RewardMLP(P)}, pickled)  # a pickled module: refused by weights_only
    with pytest.raises(ModelLoadError, match="cannot read weights") as err:
        LAIONAesthetic(str(pickled), str(clip_dir))
    assert "\n" not in str(err.value)
    two = tmp_path / "two"
    two.mkdir()
    torch.save(head_state, two / "a.pth")
    torch.save(head_state, two / "b.pth")
    with pytest.raises(ModelLoadError, match="holds 2 weights files"):
        LAIONAesthetic(str(two), str(clip_dir))
    with pytest.raises(ModelLoadError, match="does not exist"):
        LAIONAesthetic(str(tmp_path / "missing"), str(clip_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        LAIONAesthetic(str(two / "a.pth"))  # default CLIP: openai/clip-vit-large-patch14
    assert time.perf_counter() - start < 10
    assert "\n" not in str(err.value)
    assert "hf download openai/clip-vit-large-patch14 --local-dir DIR" in str(err.value)
