"""Real weights and a real key layout (issue "real files").

* The LAION improved aesthetic predictor head ``sac+logos+ava1-l14-linearMSE.pth`` loads with
  ``torch.load(weights_only=True)`` into :class:`RewardMLP` through the path
  :class:`LAIONAesthetic` uses, and computes the plain linear chain a hand-written MLP computes;
  end to end on a tiny CLIP with a 768-d projection, the score is that head of the normalised
  image embedding.
* LAION's single-Linear heads ``laion_sa_0_4_vit_{l_14,b_32}_linear.pth`` are refused with one
  line naming the file.
* The DERIVED layout of SPO's step-aware preference model (982 keys, with and without the
  ``model.`` prefix) splits into exactly a ViT-H-14 ``CLIPModel`` state dict (plus the two
  ``position_ids`` buffers old transformers saved) and a :class:`TimestepModulation` state dict.
"""

import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import CLIPConfig, CLIPModel

from lightning_pref.errors import ModelLoadError
from lightning_pref.scoring import LAIONAesthetic, RewardMLP
from lightning_pref.scoring.clip import load_weights_file
from lightning_pref.scoring.step_aware import TimestepModulation, split_spo_state_dict

HEAD = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_SHAPES = {
    "layers.0.weight": (1024, 768),
    "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024),
    "layers.2.bias": (128,),
    "layers.4.weight": (64, 128),
    "layers.4.bias": (64,),
    "layers.6.weight": (16, 64),
    "layers.6.bias": (16,),
    "layers.7.weight": (1, 16),
    "layers.7.bias": (1,),
}
LINEAR_HEADS = {"laion_sa_0_4_vit_l_14_linear.pth": 768, "laion_sa_0_4_vit_b_32_linear.pth": 512}
SPO_LAYOUT = "spo/spo_step_aware_pm_state_dict_layout_DERIVED.json"
# ViT-H-14 (laion CLIP-ViT-H-14-laion2B-s32B-b79K = PickScore_v1), as the layout's shapes say.
VIT_H_TEXT = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    vocab_size=49408,
    max_position_embeddings=77,
)
VIT_H_VISION = dict(
    hidden_size=1280,
    num_hidden_layers=32,
    num_attention_heads=16,
    intermediate_size=5120,
    patch_size=14,
    image_size=224,
)
POSITION_IDS = {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}


def hand_mlp(state: dict[str, Tensor], x: Tensor) -> Tensor:
    """The aesthetic MLP by hand: five affine maps, no activations (dropouts are eval no-ops)."""
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0]  # [N]


def unit_rows(n: int, seed: int, dim: int = 768) -> Tensor:
    """``n`` random L2-normalised rows ``[n, dim]``."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def head_file(realfiles: Path) -> Path:
    return realfiles / "weights" / HEAD


@pytest.fixture(scope="module")
def head_state(head_file: Path) -> dict[str, Tensor]:
    return load_weights_file(head_file)


@pytest.fixture(scope="module")
def tiny_clip_768(tmp_path_factory) -> Path:
    """A saved tiny random ``CLIPModel`` whose projection is 768-d, as CLIP ViT-L/14's."""
    torch.manual_seed(0)
    common = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(common, vocab_size=64, max_position_embeddings=8)
    vision = dict(common, image_size=16, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))
    folder = tmp_path_factory.mktemp("tiny_clip_768")
    clip.save_pretrained(str(folder))
    return folder


def test_aesthetic_head_file_is_a_plain_state_dict(head_file, head_state):
    """The real head loads with ``weights_only=True``: exactly RewardMLP's keys, shapes, fp32.

    Its tensors were saved from CUDA (``data.pkl`` names ``cuda`` locations), so a CPU machine
    needs ``map_location``, which ``load_weights_file`` passes."""
    assert head_file.stat().st_size == 3714759
    with zipfile.ZipFile(head_file) as archive:
        pickle_name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        assert b"cuda" in archive.read(pickle_name)
    plain = torch.load(head_file, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in plain.items()} == HEAD_SHAPES
    assert {k: tuple(v.shape) for k, v in RewardMLP(768).state_dict().items()} == HEAD_SHAPES
    assert all(v.dtype == torch.float32 for v in plain.values())
    assert all(torch.equal(head_state[k], plain[k]) for k in HEAD_SHAPES)


def test_aesthetic_head_matches_hand_written_mlp(head_state):
    """RewardMLP with the real weights equals the hand-written chain on normalised embeddings."""
    head = RewardMLP(768).eval()
    head.load_state_dict(head_state)
    x = unit_rows(8, seed=0)
    with torch.no_grad():
        got = head(x)
    expected = hand_mlp(head_state, x)
    assert got.shape == (8,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - expected[0]).abs().max() > 1e-4  # the embeddings matter
    shifted = dict(head_state, **{"layers.7.bias": head_state["layers.7.bias"] + 1e-3})
    assert not torch.allclose(got, hand_mlp(shifted, x), rtol=1e-5, atol=1e-5)


def test_aesthetic_head_pinned_values(head_state):
    """Pinned scores of the real head: 5.2366458 at the zero vector (the chain of biases) and
    4.8832849 at the uniform unit vector ``1 / sqrt(768)`` (float64 reference values)."""
    head = RewardMLP(768).eval()
    head.load_state_dict(head_state)
    x = torch.stack([torch.zeros(768), torch.full((768,), 768**-0.5)])
    with torch.no_grad():
        got = head(x)
    torch.testing.assert_close(got, torch.tensor([5.2366458, 4.8832849]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_laion_aesthetic_end_to_end_on_real_head(
    realfiles, head_file, head_state, tiny_clip_768, as_folder
):
    """score = hand MLP(e / ||e||), e = visual_projection(pooled CLIP feature); head by file or
    by the folder that holds it (several weights files, one named ``sac+logos+...``)."""
    head_path = realfiles / "weights" if as_folder else head_file
    scorer = LAIONAesthetic(head_path=str(head_path), pretrained=str(tiny_clip_768))
    assert all(torch.equal(scorer.head.state_dict()[k], v) for k, v in head_state.items())
    clip = CLIPModel.from_pretrained(str(tiny_clip_768)).eval()
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        pixels = scorer.preprocess(images)  # [2, 3, 16, 16]
        emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        expected = hand_mlp(head_state, emb / emb.norm(dim=-1, keepdim=True))
        got = scorer(images, ["a photo", "ignored"])
    assert pixels.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[0] - got[1]).abs() > 1e-5  # the images matter


@pytest.mark.parametrize("name", sorted(LINEAR_HEADS))
def test_linear_heads_are_single_linear_layers(realfiles, name):
    """``laion_sa_0_4_*_linear.pth``: one ``Linear(D, 1)`` state dict (D 768 for L/14, 512 B/32)."""
    state = load_weights_file(realfiles / "weights" / name)
    width = LINEAR_HEADS[name]
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "weight": (1, width),
        "bias": (1,),
    }


@pytest.mark.parametrize("name", sorted(LINEAR_HEADS))
def test_laion_aesthetic_refuses_linear_heads_in_one_line(realfiles, tiny_clip_768, name):
    """LAIONAesthetic takes only the MLP head: a linear head gives one line naming the file."""
    path = realfiles / "weights" / name
    with pytest.raises(ModelLoadError) as info:
        LAIONAesthetic(head_path=str(path), pretrained=str(tiny_clip_768))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "is not an aesthetic head" in message


@pytest.fixture(scope="module")
def spo_layout(realfiles: Path) -> dict[str, tuple[int, ...]]:
    """The DERIVED SPM layout: key -> shape (982 entries)."""
    data = json.loads((realfiles / SPO_LAYOUT).read_text())
    assert data["counts"]["total_entries"] == 982
    assert set(data["counts"]["persistent_buffers_in_old_transformers"]) == POSITION_IDS
    return {k: tuple(v) for k, v in data["keys_with_shapes"].items()}


@pytest.fixture(scope="module")
def vit_h_models() -> tuple[CLIPModel, TimestepModulation]:
    """ViT-H-14 CLIP and its TimestepModulation, on the meta device (nothing allocated)."""
    config = CLIPConfig(text_config=VIT_H_TEXT, vision_config=VIT_H_VISION, projection_dim=1024)
    with torch.device("meta"):
        clip = CLIPModel(config)
        modulation = TimestepModulation(
            VIT_H_VISION["hidden_size"], len(clip.vision_model.encoder.layers)
        )
    return clip, modulation


def spo_to_package_key(key: str) -> tuple[str, str]:
    """Hand-written expected destination (``clip`` or ``modulation``, key) of an SPO key."""
    parts = key.split(".")
    if parts[0] == "t_embedder":  # t_embedder.mlp.{0,2}.{weight,bias}
        return "modulation", ".".join(["timestep_mlp", *parts[2:]])
    if parts[:2] == ["vision_model", "adaLN_modulation"]:  # vision_model.adaLN_modulation.1.*
        return "modulation", ".".join(["pooled", *parts[2:]])
    if "adaLN_modulation" in parts:  # vision_model.encoder.layers.{i}.adaLN_modulation.1.*
        return "modulation", ".".join(["layers", parts[3], *parts[5:]])
    return "clip", key


@pytest.mark.parametrize("prefix", ["", "model."], ids=["save_pretrained", "wrapper_bin"])
def test_spo_layout_keys_each_land_once(spo_layout, prefix):
    """Every one of the 982 tensors lands, itself, under its hand-mapped key in exactly one part."""
    state = {prefix + k: torch.empty(shape, device="meta") for k, shape in spo_layout.items()}
    clip_sd, mod_sd = split_spo_state_dict(state)
    assert len(clip_sd) + len(mod_sd) == len(state) == 982
    assert len(mod_sd) == 70
    parts = {"clip": clip_sd, "modulation": mod_sd}
    for key in spo_layout:
        part, new_key = spo_to_package_key(key)
        assert parts[part][new_key] is state[prefix + key], key
    ids = [id(v) for v in (*clip_sd.values(), *mod_sd.values())]
    assert sorted(ids) == sorted(id(v) for v in state.values())


@pytest.mark.parametrize("prefix", ["", "model."], ids=["save_pretrained", "wrapper_bin"])
def test_spo_layout_clip_part_is_vit_h_clip(spo_layout, vit_h_models, prefix):
    """The CLIP part has exactly ViT-H-14 CLIPModel's keys and shapes, plus the two
    ``position_ids`` buffers that are non-persistent in this transformers (a strict=False load
    reports only those as unexpected, nothing missing)."""
    clip, _ = vit_h_models
    state = {prefix + k: torch.empty(shape, device="meta") for k, shape in spo_layout.items()}
    clip_sd, _ = split_spo_state_dict(state)
    expected = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    assert len(expected) == 910
    assert {k: tuple(v.shape) for k, v in clip_sd.items() if k not in POSITION_IDS} == expected
    buffers = dict(clip.named_buffers())
    assert set(clip_sd) - set(expected) == POSITION_IDS
    assert {k: tuple(clip_sd[k].shape) for k in POSITION_IDS} == {
        k: tuple(buffers[k].shape) for k in POSITION_IDS
    }
    assert tuple(clip_sd["text_model.embeddings.position_ids"].shape) == (1, 77)
    assert tuple(clip_sd["vision_model.embeddings.position_ids"].shape) == (1, 257)
    with torch.device("meta"):
        fresh = CLIPModel(clip.config)
    result = fresh.load_state_dict(clip_sd, strict=False, assign=True)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) == POSITION_IDS


@pytest.mark.parametrize("prefix", ["", "model."], ids=["save_pretrained", "wrapper_bin"])
def test_spo_layout_modulation_part_is_timestep_modulation(spo_layout, vit_h_models, prefix):
    """The modulation part has exactly TimestepModulation(1280, 32)'s keys and shapes, and loads
    strictly."""
    _, modulation = vit_h_models
    state = {prefix + k: torch.empty(shape, device="meta") for k, shape in spo_layout.items()}
    _, mod_sd = split_spo_state_dict(state)
    expected = {k: tuple(v.shape) for k, v in modulation.state_dict().items()}
    assert len(expected) == 70
    assert {k: tuple(v.shape) for k, v in mod_sd.items()} == expected
    assert expected["layers.31.1.weight"] == (6 * 1280, 1280)
    assert expected["pooled.1.weight"] == (2 * 1280, 1280)
    assert expected["timestep_mlp.0.weight"] == (1280, 256)
    with torch.device("meta"):
        fresh = TimestepModulation(1280, 32)
    fresh.load_state_dict(mod_sd, strict=True, assign=True)
