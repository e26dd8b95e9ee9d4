"""Rectified flow on a ``FlowMatchEulerDiscreteScheduler``'s sigma table, for any denoiser.

:class:`RectifiedFlow` is what every flow policy shares, whatever network predicts the velocity
(the SD3/SD3.5 and FLUX transformers of :mod:`~lightning_pref.models.flow` and
:mod:`~lightning_pref.models.flux`, MiniPick-Flow's UNet in :mod:`lightning_pref.minipick.flow`):
noising ``x_t = (1 − σ) x0 + σ ε``, the velocity target ``ε − x0``, training levels and their
sampling (uniform, logit-normal, mode; see :mod:`~lightning_pref.models.flow`), the sampler's
sigmas, and the refusal of a DDPM schedule. A subclass sets ``timestep_sampling``,
``logit_mean``, ``logit_std`` and ``mode_scale``, calls :meth:`RectifiedFlow._register_sigmas`
once its scheduler is loaded, and defines ``velocity(unet, x_t, sigma, prompt_embeds)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_pref.errors import ConfigError

__all__ = ["RectifiedFlow"]


class RectifiedFlow:
    """Mixin (before :class:`~lightning_pref.models.policy.DiffusionPolicy`) for flow policies."""

    timestep_sampling: str
    logit_mean: float
    logit_std: float
    mode_scale: float
    noise_scheduler: object
    sigmas: Tensor

    def _register_sigmas(self) -> None:
        """The training levels' sigmas, ascending ``[1000]``, as a (non-persistent) buffer."""
        sigmas = torch.as_tensor(self.noise_scheduler.sigmas).float().flip(0)
        self.register_buffer("sigmas", sigmas.clone(), persistent=False)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ properties
    @property
    def is_flow(self) -> bool:
        """A rectified-flow model."""
        return True

    @property
    def prediction_type(self) -> str:
        """``flow``: the velocity ``ε − x0``."""
        return "flow"

    @property
    def num_train_timesteps(self) -> int:
        """Levels of the sigma table (1000)."""
        return int(self.noise_scheduler.config.num_train_timesteps)  # type: ignore[attr-defined]

    @property
    def alphas_cumprod(self) -> Tensor:
        """Refused: a flow model has no DDPM schedule."""
        raise ConfigError(
            "this objective or noising needs a DDPM noise schedule (alphas_cumprod), which a "
            "rectified-flow policy does not have; use it with a UNet DiffusionPolicy"
        )

    # ------------------------------------------------------------------ timesteps and noising
    def sample_timesteps(
        self, n: int, generator: torch.Generator, low: int, high: int, device: torch.device
    ) -> Tensor:
        """Training levels ``[n]`` (module docstring); ``uniform`` draws in ``[low, high)``."""
        if self.timestep_sampling == "uniform":
            return torch.randint(low, high, (n,), generator=generator, device=device)
        if (low, high) != (0, self.num_train_timesteps):
            raise ConfigError("timestep_range needs timestep_sampling='uniform'")
        if self.timestep_sampling == "mode":
            u = torch.rand(n, generator=generator, device=device)
            u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        else:
            normal = torch.randn(n, generator=generator, device=device)
            u = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        index = (u * self.num_train_timesteps).long()  # the scheduler's (descending) index
        return self.num_train_timesteps - 1 - index

    def _sigma(self, timesteps: Tensor, like: Tensor) -> Tensor:
        return self.sigmas[timesteps].view(-1, *[1] * (like.dim() - 1)).to(like.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = (1 − σ_t) x0 + σ_t ε``."""
        sigma = self._sigma(timesteps, x0)
        return (1 - sigma) * x0 + sigma * noise

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The velocity ``ε − x0``."""
        return noise - x0

    def velocity(
        self, unet: nn.Module, x_t: Tensor, sigma: Tensor, prompt_embeds: Tensor
    ) -> Tensor:  # pragma: no cover - every flow policy defines it
        """The velocity at noise levels ``sigma`` ``[N]`` in [0, 1]."""
        raise NotImplementedError

    def unet_forward(
        self, unet: nn.Module, x_t: Tensor, timesteps: Tensor, prompt_embeds: Tensor
    ) -> Tensor:
        """The velocity ``[N, C, h, w]`` of ``unet`` (the policy's or a reference) at levels t."""
        return self.velocity(unet, x_t, self.sigmas[timesteps], prompt_embeds)

    def sampling_sigmas(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """The sampler's noise levels ``[num_steps + 1]`` from 1 to 0, as the SD3 pipeline's.

        ``FlowMatchEulerDiscreteScheduler.set_timesteps``: evenly spaced, shifted, then 0.
        ``latent_size`` (h, w) matters only to resolution-dependent shifts (FLUX).
        """
        scheduler = type(self.noise_scheduler).from_config(self.noise_scheduler.config)  # type: ignore[attr-defined]
        scheduler.set_timesteps(num_steps)
        return torch.as_tensor(scheduler.sigmas).float().to(self.sigmas.device)
