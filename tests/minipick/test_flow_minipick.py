"""MiniPick-Flow: the flow parameterisation on MiniPick's UNet, its assets and a DPO step."""

from functools import partial

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from lightning import Trainer

from lightning_pref.data import PickAPicDataModule
from lightning_pref.errors import ConfigError
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.data import MiniPickDataModule
from lightning_pref.minipick.flow import MiniPickFlowPolicy
from lightning_pref.minipick.flow_model import MiniPickFlowFolderPolicy, ScratchMiniPickFlowPolicy
from lightning_pref.minipick.store import MANIFEST, AssetSettings, is_complete
from lightning_pref.models.sampling import sample_images
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO

TINY = AssetSettings(
    base_source="train",
    base_steps=3,
    flow_base_steps=3,
    base_batch_size=8,
    num_train_pairs=40,
    num_val_pairs=8,
    sample_steps=2,
    max_unique_pairs=4,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    a = MiniPickAssets(tmp_path_factory.mktemp("minipick_flow"), TINY)
    a.flow_pairs_dir(build=True)
    return a


def _two_steps(module, data) -> Trainer:
    """Fit ``module`` on ``data`` for 2 optimizer steps, quietly, on the CPU."""
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return trainer


def test_noising_target_and_told_timestep_by_hand():
    """shift 1: σ(t) = (t + 1)/1000, so t = 499 is σ = 0.5.

    x0 = 1, ε = 3: x_t = (1 − 0.5)·1 + 0.5·3 = 2, target ε − x0 = 2, and the UNet is told
    1000·σ = 500 (the flow scheduler's own timestep for that level).
    """
    policy = ScratchMiniPickFlowPolicy()
    policy.build()
    x0, eps = torch.ones(1, 3, 16, 16), torch.full((1, 3, 16, 16), 3.0)
    t = torch.tensor([499])
    assert policy.sigmas[499].item() == pytest.approx(0.5)
    assert torch.allclose(policy.add_noise(x0, eps, t), torch.full_like(x0, 2.0))
    assert torch.allclose(policy.training_target(x0, eps, t), torch.full_like(x0, 2.0))
    told = []
    handle = policy.unet.time_proj.register_forward_hook(lambda m, i, o: told.append(i[0]))
    policy.unet_forward(policy.unet, policy.add_noise(x0, eps, t), t, policy.encode_prompt(["a"]))
    handle.remove()
    assert told[0].tolist() == pytest.approx([500.0])
    assert policy.is_flow and policy.prediction_type == "flow"


def test_ddpm_schedule_is_refused_in_one_line():
    policy = ScratchMiniPickFlowPolicy()
    policy.build()
    with pytest.raises(ConfigError, match="DDPM noise schedule"):
        _ = policy.alphas_cumprod


def test_flow_base_and_pairs_are_sealed_assets(assets):
    base, pairs = assets.flow_base_dir(build=False), assets.flow_pairs_dir(build=False)
    assert base.name.startswith("flowbase-") and pairs.name.startswith("flowpairs-")
    assert is_complete(base) and is_complete(pairs)
    assert base != assets.base_dir(build=False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base / "scheduler")
    assert scheduler.config.shift == 1.0
    info = __import__("json").loads((pairs / MANIFEST).read_text())["info"]
    assert info["train"]["pairs"] == 40
    assert 0.0 <= info["train"]["winner_has_higher_fidelity"] <= 1.0


def test_the_ddpm_base_folder_is_refused_as_a_flow_base(assets):
    policy = MiniPickFlowFolderPolicy(str(assets.base_dir(build=True)))
    with pytest.raises(ConfigError, match="is it the DDPM base"):
        policy.build()


def test_samples_with_the_euler_ode(assets):
    policy = MiniPickFlowFolderPolicy(str(assets.flow_base_dir(build=False)))
    policy.build()
    images = sample_images(policy, ["a large red circle on the left"], torch.Generator(), 2, 5.0)
    assert images.shape == (1, 3, 16, 16)
    assert images.abs().max() <= 1.0


def test_datamodule_reads_the_flow_pairs(tmp_path):
    dm = MiniPickDataModule(data_dir=str(tmp_path), backbone="flow")
    assert dm.pairs_path.name.startswith("flowpairs-")
    with pytest.raises(ConfigError, match="backbone"):
        MiniPickDataModule(data_dir=str(tmp_path), backbone="edm")


def test_dpo_steps_on_flow_pairs_move_the_weights(assets):
    policy = MiniPickFlowPolicy(data_dir=str(assets.root))
    policy.assets = assets  # the tiny settings' base
    policy.build()
    module = OfflinePairModule(
        policy, DiffusionDPO(beta=1000.0), optimizer=partial(torch.optim.AdamW, lr=1e-3), seed=0
    )
    before = {k: v.clone() for k, v in policy.unet.state_dict().items()}
    pairs = assets.flow_pairs_dir(build=False)
    data = PickAPicDataModule(
        train_files=str(pairs / "train"), resolution=16, batch_size=4, hflip=False, seed=0
    )
    trainer = _two_steps(module, data)
    changed = [k for k, v in policy.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert trainer.callback_metrics["train/loss"].isfinite()


def test_noise_tracked_pairs_feed_pnapo(assets):
    """The PNAPO asset: best and worst of 4 flow-base samples per caption, x_T kept; it trains."""
    from safetensors.torch import load_file

    from lightning_pref.data.noise_pairs import NoisePairDataModule
    from lightning_pref.objectives import PNAPO

    folder = assets.flow_noise_pairs_dir(build=True)
    assert folder.name.startswith("flownoise-") and is_complete(folder)
    tensors = load_file(str(folder / "train" / "pairs.safetensors"))
    assert tensors["noise_w"].shape == (40, 3, 16, 16)
    assert (tensors["reward_gap"] >= 0).all()
    assert not torch.equal(tensors["noise_w"], tensors["noise_l"])
    policy = MiniPickFlowPolicy(data_dir=str(assets.root))
    policy.assets = assets
    policy.build()
    module = OfflinePairModule(
        policy, PNAPO(beta=1000.0), optimizer=partial(torch.optim.AdamW, lr=1e-3), seed=0
    )
    before = {k: v.clone() for k, v in policy.unet.state_dict().items()}
    data = NoisePairDataModule(train_dir=str(folder / "train"), batch_size=4, seed=0)
    _two_steps(module, data)
    changed = [k for k, v in policy.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2


def test_flow_levels_map_to_the_ddpm_level_of_equal_snr():
    """σ = (t + 1)/1000; SNR_flow = ((1 − σ)/σ)². t = 499: σ = 0.5, SNR 1, log-SNR 0, so the DDPM
    level whose ᾱ/(1 − ᾱ) is nearest 1, i.e. ᾱ nearest 0.5 (found here by brute force on the
    linear 1e-4 → 0.02 schedule); t = 0 stays the cleanest level, t = 999 (σ = 1) the noisiest."""
    import numpy as np

    from lightning_pref.minipick.cached import MiniPickSPM, ddpm_level_of_flow

    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    half = int(np.abs(np.log(abar / (1 - abar))).argmin())
    assert 250 < half < 265
    out = ddpm_level_of_flow(torch.tensor([0, 499, 999]))
    assert out.tolist() == [0, half, 999]
    levels = ddpm_level_of_flow(torch.arange(1000))
    assert (levels[1:] >= levels[:-1]).all()  # monotone
    with pytest.raises(ConfigError, match="levels"):
        MiniPickSPM(pretrained="unused", levels="edm")
