"""Shared pieces of the parity tests: one training step of our module vs a step written in the test.

A parity test builds a module on a tiny float64 UNet, moves the policy away from its reference (so
the reference terms are not trivially equal), pins the timesteps and noise the module draws, runs
one step of the module (loss, then backward), and compares the loss and the policy's gradient with
a reference step the test writes in plain torch in the official script's order of operations.
float64 keeps rounding far below the tolerances (loss 1e-6 relative, gradient 1e-5), so a mismatch
is a difference in the math, not in summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.testing import assert_close

from lightning_pref.models import TinyDiffusionPolicy

LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5


def double_policy(**kwargs) -> TinyDiffusionPolicy:
    """A built tiny policy in float64 (latent UNet 4×8×8, 16-wide text)."""
    policy = TinyDiffusionPolicy(**{"sample_size": 8, "seed": 0, **kwargs})
    policy.build()
    return policy.double()


def perturb(module: torch.nn.Module, scale: float = 0.02, seed: int = 1) -> None:
    """Add seeded noise to every trainable parameter (policy ≠ its frozen copy)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def pin_draws(monkeypatch, module, timesteps: Tensor | None, noise: Tensor | None) -> None:
    """Make ``module.sample_timesteps`` / ``module.sample_noise`` return these tensors.

    ``timesteps`` ([n]) and ``noise`` ([n, C, h, w]) are sliced to the size the module asks for.
    """
    if timesteps is not None:
        monkeypatch.setattr(module, "sample_timesteps", lambda n, generator: timesteps[:n].clone())
    if noise is not None:

        def fixed_noise(shape, generator, dtype):
            assert tuple(shape[1:]) == tuple(noise.shape[1:]), (shape, noise.shape)
            return noise[: shape[0]].clone().to(dtype)

        monkeypatch.setattr(module, "sample_noise", fixed_noise)


def trainable_grad(model: torch.nn.Module) -> Tensor:
    """All trainable parameters' gradients, flattened in parameter order (zeros where None)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
        for p in model.parameters()
        if p.requires_grad
    ]
    return torch.cat(parts)


def assert_parity(loss: Tensor, ref_loss: Tensor, grad: Tensor, ref_grad: Tensor) -> None:
    """Loss to 1e-6 relative, gradient to 1e-5 relative (elementwise, atol 1e-5·max|g|)."""
    assert_close(loss, ref_loss, rtol=LOSS_RTOL, atol=0.0)
    assert ref_grad.abs().max() > 0, "the reference gradient is zero: the test cannot fail"
    assert_close(grad, ref_grad, rtol=GRAD_RTOL, atol=GRAD_RTOL * float(ref_grad.abs().max()))
