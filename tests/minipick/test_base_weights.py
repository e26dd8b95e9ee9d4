"""MiniPick's committed base weights: pinned, installed into the cache, guarded, rebuildable."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import lightning_pref.minipick.base_weights as bw
from lightning_pref.errors import ConfigError, DataError
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.store import MANIFEST, AssetSettings, is_complete
from lightning_pref.models.policy import DiffusionPolicy


def test_committed_file_matches_its_pin_and_record():
    """The hash in the code, the hash in base.json and the file agree; 5 MB at most (fp16)."""
    record = json.loads(bw.RECORD_FILE.read_text())
    assert bw._sha256(bw.WEIGHTS_FILE) == bw.BASE_SHA256 == record["sha256"]
    assert bw.WEIGHTS_FILE.stat().st_size <= 5 * 2**20
    assert record["settings"] == bw._base_settings(AssetSettings())
    assert 0.50 <= record["test_quality"]["fidelity_mean"] <= 0.85


def test_cache_installs_the_committed_weights_and_rebuilds_a_corrupt_copy(tmp_path):
    assets = MiniPickAssets(tmp_path)
    base = assets.base_dir(build=True)
    assert is_complete(base)
    info = json.loads((base / MANIFEST).read_text())["info"]
    assert info["source"] == "committed" and info["sha256"] == bw.BASE_SHA256
    policy = DiffusionPolicy(pretrained=str(base))
    policy.build()
    committed = load_file(str(bw.WEIGHTS_FILE))
    for name, value in policy.unet.state_dict().items():
        assert torch.equal(value, committed[f"unet.{name}"].float()), name
    unet_file = next((base / "unet").glob("*.safetensors"))
    unet_file.write_bytes(unet_file.read_bytes()[:-10])  # a truncated copy in the cache
    assert not is_complete(base)
    assert is_complete(assets.base_dir(build=True))  # detected and installed again


def test_a_changed_committed_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    changed = tmp_path / "base.safetensors"
    shutil.copy(bw.WEIGHTS_FILE, changed)
    with changed.open("r+b") as f:  # flip one byte near the end (inside the tensor data)
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(bw, "WEIGHTS_FILE", changed)
    with pytest.raises(DataError, match="pinned SHA-256.*git checkout.*minipick-base"):
        bw.install_committed_base(tmp_path / "out", AssetSettings())
    monkeypatch.setattr(bw, "WEIGHTS_FILE", tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="missing.*minipick-base"):
        bw.install_committed_base(tmp_path / "out", AssetSettings())


def test_other_base_settings_need_training(tmp_path):
    with pytest.raises(ConfigError, match="base_steps differ.*base_source='train'"):
        bw.install_committed_base(tmp_path, AssetSettings(base_steps=10))
    with pytest.raises(ConfigError, match="'committed' or 'train'"):
        MiniPickAssets(tmp_path, AssetSettings(base_source="hub")).base_dir(build=True)


@pytest.mark.slow
def test_rebuilding_from_scratch_gives_an_equivalent_base(tmp_path):
    """`python -m lightning_pref minipick-base --out DIR` (about 10 min on 2 cores): the same
    training run on this machine gives the same quality on the test prompts (±0.05 fidelity)."""
    from lightning_pref.__main__ import main

    main(["minipick-base", "--out", str(tmp_path)])
    rebuilt = json.loads((tmp_path / "base.json").read_text())
    committed = json.loads(bw.RECORD_FILE.read_text())
    assert rebuilt["settings"] == committed["settings"]
    for key in ("fidelity_mean", "taste_mean", "gold_mean"):
        assert rebuilt["test_quality"][key] == pytest.approx(
            committed["test_quality"][key], abs=0.05
        ), key
