"""Every preference method on both flow backbones, LoRA and full fine-tuning, through ``fit``.

DPO, SmPO, KTO, SPO and PNAPO × LoRA/full × tiny SD3/tiny FLUX: each case takes 2 optimizer steps
of a tiny test config (``tests/configs``), switched to the method and backbone by command-line
overrides where no config names that combination, and checks that the trainable weights moved
against a freshly built policy (LoRA: an adapter weight other than ``lora_A``, which starts random;
full: a transformer weight).

How each method runs on flow:

- DPO: ``tiny_dpo_sd3.yaml`` / ``tiny_dpo_flux.yaml`` as they are.
- SmPO: the DPO configs with SmPO's defaults and ``FlowInversion`` with ReNoise (SmPO's own DDIM
  ReNoise needs a DDPM schedule); the Pick-a-Pic shard's hard labels (SmPO warns it is then DPO
  with β·γ), as ``test_flow_train.py`` runs it.
- KTO: the DPO configs with ``UnpairedModule`` and ``DiffusionKTO``'s defaults; the module splits
  each pair into labelled images.
- SPO: ``tiny_spo_sd3.yaml``, FLUX by swapping the policy (its pool predicts without CFG).
- PNAPO: ``tiny_pnapo_sd3.yaml`` on noise-tracked pairs this module generates with the same
  backbone (FLUX's latents have 4 channels, SD3's 16), FLUX by swapping the policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_pref.models import TinyFlowPolicy, TinyFluxPolicy

POLICIES = {"SD3": TinyFlowPolicy, "FLUX": TinyFluxPolicy}
LORA = "--model.init_args.policy.init_args.lora_rank=4"
FLUX = "--model.init_args.policy=lightning_pref.models.TinyFluxPolicy"
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a small star"]
# method: (module, objective) the run must have been built with
METHODS = {
    "DPO": ("OfflinePairModule", "DiffusionDPO"),
    "SmPO": ("OfflinePairModule", "SmPO"),
    "KTO": ("UnpairedModule", "DiffusionKTO"),
    "SPO": ("StepPoolModule", "SPO"),
    "PNAPO": ("OfflinePairModule", "PNAPO"),
}


def brightness(images, captions):
    return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def noise_pairs(tmp_path_factory):
    """``noise_pairs(backbone)``: a folder of noise-tracked pairs of that tiny policy, made once."""
    from lightning_pref.data import generate_noise_pairs

    made: dict[str, Path] = {}

    def make(backbone: str) -> Path:
        if backbone not in made:
            policy = POLICIES[backbone]()
            policy.build()
            out = tmp_path_factory.mktemp(f"pnapo_{backbone.lower()}") / "pairs"
            generate_noise_pairs(policy, PROMPTS, brightness, out, num_candidates=3, num_steps=4)
            made[backbone] = out
        return made[backbone]

    return make


def _run(method: str, backbone: str, noise_pairs) -> tuple[str, list[str]]:
    """The test config and the overrides that train ``method`` on ``backbone``."""
    dpo = f"tiny_dpo_{backbone.lower()}.yaml"
    if method == "DPO":
        return dpo, []
    if method == "SmPO":
        return dpo, [
            "--model.init_args.objective=lightning_pref.objectives.SmPO",
            "--model.init_args.objective.init_args={}",
            "--model.init_args.noising=lightning_pref.models.noising.FlowInversion",
            "--model.init_args.noising.init_args.renoise=true",
        ]
    if method == "KTO":
        return dpo, [
            "--model=lightning_pref.modules.UnpairedModule",
            "--model.init_args.objective=lightning_pref.objectives.DiffusionKTO",
            "--model.init_args.objective.init_args={}",
        ]
    swap = [FLUX] if backbone == "FLUX" else []
    if method == "SPO":
        return "tiny_spo_sd3.yaml", swap
    assert method == "PNAPO"
    pairs = noise_pairs(backbone)
    return "tiny_pnapo_sd3.yaml", [*swap, f"--data.init_args.train_dir={pairs}"]


@pytest.mark.parametrize("backbone", ["SD3", "FLUX"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method", METHODS)
def test_two_steps_move_the_trainable_weights(
    fit_tiny, noise_pairs, tmp_path, method, lora, backbone
):
    config, extra = _run(method, backbone, noise_pairs)
    version = fit_tiny(config, tmp_path, *extra, *([LORA] if lora else []))
    model = yaml.safe_load((version / "config.yaml").read_text())["model"]  # the overrides took
    policy = model["init_args"]["policy"]
    classes = (model["class_path"], model["init_args"]["objective"]["class_path"])
    assert tuple(c.rsplit(".", 1)[1] for c in classes) == METHODS[method]
    assert policy["class_path"].rsplit(".", 1)[1] == POLICIES[backbone].__name__
    assert policy["init_args"]["lora_rank"] == (4 if lora else None)
    if method == "SmPO":  # on flow, through FlowInversion with ReNoise
        assert model["init_args"]["noising"]["class_path"].endswith(".FlowInversion")
        assert model["init_args"]["noising"]["init_args"]["renoise"] is True
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    state = ckpt["state_dict"]
    base = POLICIES[backbone](lora_rank=4 if lora else None)
    torch.manual_seed(0)
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    keys = [k for k in state if "lora" in k] if lora else list(state)
    assert keys and all(k.startswith("policy.unet.") and k in start for k in keys)
    moved = [k for k in keys if "lora_A" not in k and not torch.equal(state[k], start[k])]
    assert moved, f"{method} on {backbone} moved no trainable weight"
