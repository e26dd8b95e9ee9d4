"""Training on the rectified-flow path: the tiny SD3 config through ``fit``, LoRA and full.

Each run takes 2 optimizer steps of ``tests/configs/tiny_dpo_sd3.yaml`` (or the objective named)
and checks the trainable weights moved; methods that need a DDPM schedule stop with one line.
"""

from __future__ import annotations

import pytest
import torch

from lightning_pref.models import TinyFlowPolicy

LORA = "--model.init_args.policy.init_args.lora_rank=4"


def _trained(version) -> dict[str, torch.Tensor]:
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    return ckpt["state_dict"]


@pytest.mark.parametrize(
    ("objective", "lora"),
    [
        ("DiffusionDPO", True),
        ("DiffusionDPO", False),
        ("MaPO", True),
        ("SFT", False),
        ("DSPO", True),
        ("DiffusionEXO", True),
    ],
)
def test_two_steps_change_the_weights(fit_tiny, tmp_path, objective, lora):
    extra = [f"--model.init_args.objective=lightning_pref.objectives.{objective}"]
    if objective != "DiffusionDPO":
        extra.append("--model.init_args.objective.init_args={}")
    version = fit_tiny("tiny_dpo_sd3.yaml", tmp_path, *extra, *([LORA] if lora else []))
    state = _trained(version)
    base = TinyFlowPolicy(lora_rank=4 if lora else None)
    torch.manual_seed(0)
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    keys = [k for k in state if "lora" in k] if lora else list(state)
    assert keys and all(k.startswith("policy.unet.") for k in keys)
    moved = [k for k in keys if "lora_A" not in k and not torch.equal(state[k], start[k])]
    assert moved, "no trainable weight changed"


@pytest.mark.parametrize("objective", ["SmPO", "InPO", "CaPO"])
def test_schedule_bound_methods_refuse_flow(fit_tiny, tmp_path, capsys, objective):
    """ReNoise/DDIM inversion (SmPO, InPO) and CaPO's SNR weights need ā_t: one line."""
    extra = [
        f"--model.init_args.objective=lightning_pref.objectives.{objective}",
        "--model.init_args.objective.init_args={}",
    ]
    with pytest.raises(SystemExit) as err:
        fit_tiny("tiny_dpo_sd3.yaml", tmp_path, *extra)
    assert err.value.code != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "DDPM noise schedule" in lines[0]


def test_kto_on_flow_starts_at_half_and_trains():
    """Diffusion-KTO's UnpairedModule on the flow policy: policy = reference gives 0.5 exactly
    (as on the UNet policies), and one step sends gradients into every adapter."""
    from lightning_pref.modules import UnpairedModule
    from lightning_pref.objectives import DiffusionKTO
    from lightning_pref.types import ImageLabelBatch

    module = UnpairedModule(TinyFlowPolicy(lora_rank=4), DiffusionKTO())
    torch.manual_seed(0)
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    batch = ImageLabelBatch(
        torch.rand(3, 3, 16, 16, generator=g) * 2 - 1,
        ["a red circle", "a blue square", ""],
        torch.tensor([1.0, -1.0, 1.0]),
    )
    out = module.shared_step(batch, "train", 0)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6)
    out.loss.backward()
    adapters = [p for p in module.policy.unet.parameters() if p.requires_grad]
    assert adapters and all(p.grad is not None for p in adapters)


def test_evaluate_a_flow_run(fit_tiny, tmp_path):
    """``evaluate`` on a flow run samples base and tuned with the Euler ODE and scores them."""
    import json

    from lightning_pref.__main__ import main

    version = fit_tiny("tiny_dpo_sd3.yaml", tmp_path, LORA)
    out = tmp_path / "eval"
    fast = ["--num_samples", "4", "--num_steps", "2", "--diversity_samples", "2"]
    main(["evaluate", "--run", str(version), "--out", str(out), *fast])
    report = json.loads((out / "report.json").read_text())
    assert report["sampler"] == "Euler ODE (flow)"
    assert report["num_samples"] == 4 and "gold" in report["scores"]


def test_flow_step_pool_pairs_are_draws_of_the_training_transition(monkeypatch):
    """The SD3 step pool branches candidates with Flow-GRPO's SDE; recomputing each stored
    transition as training does (``transition`` on the integer levels) gives standard-normal
    residuals (x_w - mean) / std: sampling and the log-probabilities agree."""
    from pathlib import Path

    from lightning_pref.data import StepPoolSampler
    from lightning_pref.models.sampling import transition

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "resume"))
    from resume_helpers import Brightness

    policy = TinyFlowPolicy()
    policy.build()
    sampler = StepPoolSampler(Brightness(), num_candidates=3, num_steps=5, eta=0.7)
    pool = sampler.generate(
        policy, ["a red circle", "a blue square"] * 4, torch.Generator().manual_seed(0)
    )
    b = pool.batch
    cond = policy.encode_prompt(b.captions)
    uncond = policy.encode_prompt([""] * len(b.captions))
    with torch.no_grad():
        out = sampler.predict(policy, b.x_t, b.timesteps, cond, uncond)
        step = transition(policy, out, b.x_t, b.timesteps, b.prev_timesteps, 0.7, prev_sample=b.x_w)
    z = torch.cat([(x - step.mean) / step.std.view(-1, 1, 1, 1) for x in (b.x_w, b.x_l)])
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05


@pytest.mark.parametrize("lora", [True, False])
def test_spo_on_flow_trains(fit_tiny, tmp_path, lora):
    """Two optimizer steps of SPO on the tiny SD3 model move the trainable weights."""
    version = fit_tiny("tiny_spo_sd3.yaml", tmp_path, *([LORA] if lora else []))
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    base = TinyFlowPolicy(lora_rank=4 if lora else None)
    torch.manual_seed(0)
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    keys = [k for k in ckpt["state_dict"] if "lora_B" in k] if lora else list(ckpt["state_dict"])
    assert keys and any(not torch.equal(ckpt["state_dict"][k], start[k]) for k in keys)


def test_flux_step_pool_and_tailorpo_g_on_flow(monkeypatch):
    """FLUX's pool predicts without CFG (its embedded guidance) and its stored pairs are draws of
    the recomputed transitions; TailorPO-G's reward guidance on flow moves the winner and its x̂0
    by the same shift (v held fixed) and raises the winner's score."""
    from pathlib import Path

    from lightning_pref.data import StepPoolSampler
    from lightning_pref.models import TinyFluxPolicy
    from lightning_pref.models.sampling import transition

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "resume"))
    from resume_helpers import Brightness

    policy = TinyFluxPolicy()
    policy.build()
    sampler = StepPoolSampler(Brightness(), num_candidates=3, num_steps=5, eta=0.7)
    pool = sampler.generate(
        policy, ["a red circle", "a blue square"] * 4, torch.Generator().manual_seed(0)
    )
    b = pool.batch
    with torch.no_grad():
        out = policy(b.x_t, b.timesteps, policy.encode_prompt(b.captions))
        step = transition(policy, out, b.x_t, b.timesteps, b.prev_timesteps, 0.7, prev_sample=b.x_w)
    z = torch.cat([(x - step.mean) / step.std.view(-1, 1, 1, 1) for x in (b.x_w, b.x_l)])
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    guided = StepPoolSampler(
        Brightness(), num_candidates=3, num_steps=5, eta=0.7, reward_guidance=1.0
    )
    sd3 = TinyFlowPolicy()
    sd3.build()
    plain = sampler.generate(sd3, ["a red circle"] * 4, torch.Generator().manual_seed(1))
    pushed = guided.generate(sd3, ["a red circle"] * 4, torch.Generator().manual_seed(1))
    assert (pushed.score_w > plain.score_w).all()


def test_flow_transition_levels_by_hand():
    """The pool's integer levels map to σ(t) = 3s/(1+2s), s = (t+1)/1000 (SD3's shift 3), and a
    level below 0 to σ = 0: transition equals flow_sde_step on those σ written out by hand."""
    from lightning_pref.models.sampling import flow_sde_step, transition

    policy = TinyFlowPolicy()
    policy.build()

    def sigma(t: int) -> float:
        s = (t + 1) / 1000
        return 3 * s / (1 + 2 * s)

    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    t, t_prev = torch.tensor([801, 1]), torch.tensor([601, -199])
    ours = transition(policy, v, x, t, t_prev, 0.7, prev_sample=x)
    hand = flow_sde_step(
        v, x, torch.tensor([sigma(801), sigma(1)]), torch.tensor([sigma(601), 0.0]), 1.0, 0.7,
        prev_sample=x,
    )  # fmt: skip
    torch.testing.assert_close(ours.mean, hand.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.std, hand.std, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("objective", "noising"),
    [("SmPO", ["--model.init_args.noising.init_args.renoise=true"]),
     ("InPO", ["--model.init_args.noising.init_args.num_steps=10",
               "--model.init_args.noising.init_args.extra_noise=0.1"])],
)  # fmt: skip
def test_smpo_and_inpo_train_on_flow_with_flow_inversion(fit_tiny, tmp_path, objective, noising):
    """SmPO (ReNoise) and InPO (η 0.1, grid 10) with FlowInversion: two steps move the adapters."""
    extra = [
        f"--model.init_args.objective=lightning_pref.objectives.{objective}",
        "--model.init_args.objective.init_args={}",
        "--model.init_args.noising=lightning_pref.models.noising.FlowInversion",
        *noising,
        LORA,
    ]
    state = _trained(fit_tiny("tiny_dpo_sd3.yaml", tmp_path, *extra))
    base = TinyFlowPolicy(lora_rank=4)
    torch.manual_seed(0)
    base.build()
    start = {f"policy.{k}": v for k, v in base.state_dict().items()}
    assert any(not torch.equal(state[k], start[k]) for k in state if "lora_B" in k)
