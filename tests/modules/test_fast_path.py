"""The fast-path options give the plain path's loss (and gradients) on a tiny model."""

from functools import partial
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from lightning_pref.__main__ import main
from lightning_pref.errors import ConfigError
from lightning_pref.models import FastPath, TinyDiffusionPolicy
from lightning_pref.modules import OfflinePairModule
from lightning_pref.objectives import DiffusionDPO


def make(fast=None, beta=5000.0, lora_rank=None, checkpointing=False) -> OfflinePairModule:
    """A tiny DPO module whose policy is nudged off the reference (else the loss is log 2)."""
    policy = TinyDiffusionPolicy(sample_size=8, seed=0, lora_rank=lora_rank)
    policy.gradient_checkpointing = checkpointing
    module = OfflinePairModule(
        policy, DiffusionDPO(beta=beta), optimizer=partial(torch.optim.AdamW, lr=1e-3),
        seed=0, fast=fast,
    )  # fmt: skip
    module.configure_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.policy.unet.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return module


def loss_and_grads(module, batch):
    module.zero_grad(set_to_none=True)
    out = module.shared_step(batch, "train", 0)
    out.loss.backward()
    grads = [p.grad.clone() for p in module.policy.unet.parameters() if p.requires_grad]
    return out, torch.cat([g.flatten() for g in grads])


def assert_same_step(out_a, grad_a, out_b, grad_b) -> None:
    """MSEs to 1e-5 relative; the loss to 2e-4 (β·MSE amplifies rounding: the loss is a function
    of 2500 × a difference of MSEs); the gradient vector to a relative L2 error of 1e-4 (single
    tiny entries wobble more)."""
    for key in ("model_mse_w", "model_mse_l", "ref_mse_w", "ref_mse_l"):
        torch.testing.assert_close(out_b.metrics[key], out_a.metrics[key], rtol=1e-5, atol=0)
    torch.testing.assert_close(out_b.loss, out_a.loss, rtol=2e-4, atol=0)
    assert (grad_b - grad_a).norm() / grad_a.norm() < 1e-4


@pytest.mark.parametrize(
    "backend",
    [
        # inductor compiles C++ kernels: ~10 s with a warm cache, ~2 min cold on 2 cores
        pytest.param("inductor", marks=pytest.mark.slow),
        "aot_eager",  # the same Dynamo capture and AOTAutograd, no code generation
    ],
)
def test_compiled_and_eager_losses_agree(image_pair_batch, backend):
    """torch.compile of policy and reference: the same step up to float reassociation
    (:func:`assert_same_step`); the checkpoint keys do not change (compiled in place)."""
    eager, compiled = make(), make(FastPath(compile=True, compile_backend=backend))
    assert set(compiled.state_dict()) == set(eager.state_dict())
    out_e, grad_e = loss_and_grads(eager, image_pair_batch)
    out_c, grad_c = loss_and_grads(compiled, image_pair_batch)
    assert out_e.loss.item() != pytest.approx(0.6931471805599453, abs=1e-3)  # not the trivial loss
    assert_same_step(out_e, grad_e, out_c, grad_c)
    assert compiled.policy.unet._compiled_call_impl is not None
    assert compiled.reference_unet._compiled_call_impl is not None


def test_channels_last_gives_the_same_loss(image_pair_batch):
    plain, fast = make(), make(FastPath(channels_last=True))
    weight = fast.policy.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.reference_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    out_p, grad_p = loss_and_grads(plain, image_pair_batch)
    out_f, grad_f = loss_and_grads(fast, image_pair_batch)
    assert_same_step(out_p, grad_p, out_f, grad_f)


def test_inference_mode_reference_is_exact_and_trains(image_pair_batch):
    plain, fast = make(), make(FastPath(reference_inference_mode=True))
    out_p, grad_p = loss_and_grads(plain, image_pair_batch)
    out_f, grad_f = loss_and_grads(fast, image_pair_batch)  # backward through the cloned output
    assert torch.equal(out_f.loss, out_p.loss) and torch.equal(grad_f, grad_p)


def test_bf16_reference_halves_its_weights_and_keeps_the_policy_exact(image_pair_batch):
    """The policy's MSEs are untouched (bit-equal); the reference's agree to bf16 precision
    (8 mantissa bits: ~0.4% relative per weight)."""
    plain, fast = make(beta=1.0), make(FastPath(reference_dtype="bfloat16"), beta=1.0)
    assert {p.dtype for p in fast.reference_unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fast.policy.unet.parameters()} == {torch.float32}
    out_p = plain.shared_step(image_pair_batch, "train", 0)
    out_f = fast.shared_step(image_pair_batch, "train", 0)
    for key in ("model_mse_w", "model_mse_l"):
        assert torch.equal(out_f.metrics[key], out_p.metrics[key])
    for key in ("ref_mse_w", "ref_mse_l"):
        torch.testing.assert_close(out_f.metrics[key], out_p.metrics[key], rtol=2e-2, atol=0)
    assert out_f.metrics["ref_mse_w"].dtype == torch.float32


def test_bf16_reference_needs_a_copy():
    with pytest.raises(ConfigError, match="needs reference='copy'"):
        make(FastPath(reference_dtype="bfloat16"), lora_rank=4)
    with pytest.raises(ConfigError, match="reference_dtype must be one of"):
        FastPath(reference_dtype="int8")  # type: ignore[arg-type]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(image_pair_batch):
    plain, ckpt = make(), make(checkpointing=True)
    assert ckpt.policy.unet.is_gradient_checkpointing
    out_p, grad_p = loss_and_grads(plain, image_pair_batch)
    out_c, grad_c = loss_and_grads(ckpt, image_pair_batch)
    torch.testing.assert_close(out_c.loss, out_p.loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_c, grad_p, rtol=1e-5, atol=1e-7)


def test_fused_adamw_takes_the_same_step(image_pair_batch):
    """The optimizer factory of the YAML (``fused: true``) against the default implementation."""
    modules = [make(), make()]
    for module, fused in zip(modules, (False, True), strict=True):
        module.optimizer_factory = partial(torch.optim.AdamW, lr=1e-3, fused=fused)
        opt = module.configure_optimizers()
        loss_and_grads(module, image_pair_batch)
        opt.step()
    a, b = (torch.cat([p.flatten() for p in m.policy.unet.parameters()]) for m in modules)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert not torch.equal(a, torch.cat([p.flatten() for p in make().policy.unet.parameters()]))


def test_attention_is_sdpa():
    """diffusers' default attention processor calls scaled_dot_product_attention."""
    module = make()
    processors = module.policy.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_fast_options_from_the_command_line(tmp_path, monkeypatch):
    """The options are YAML/CLI keys; a 2-step fit with all but compile trains and saves."""
    monkeypatch.chdir(tmp_path)
    tests = Path(__file__).parents[1]
    main(["fit", "--config", str(tests / "configs/tiny_dpo.yaml"),
          "--data.init_args.train_files", str(tests / "assets/pickapic_tiny/train"),
          "--data.init_args.val_files", "null",
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.enable_progress_bar", "false",
          "--model.init_args.fast.channels_last", "true",
          "--model.init_args.fast.reference_dtype", "bfloat16",
          "--model.init_args.fast.reference_inference_mode", "true",
          "--model.init_args.optimizer.init_args.fused", "true"])  # fmt: skip
    ckpt = torch.load(tmp_path / "runs/tiny_dpo/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"]["fast"]["reference_dtype"] == "bfloat16"
