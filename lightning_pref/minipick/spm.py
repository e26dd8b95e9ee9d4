"""A step-aware MiniPickScore: SPO's step-aware preference model (SPM) at MiniPick scale.

SPO (Liang et al. 2024, arXiv 2406.04314; METHODS §2.2, official ``time_conditioned_clip.py``)
conditions PickScore's vision tower on the denoising timestep so that it can rank the one-step
predictions x̂0 of noisy images: a sinusoidal(256) -> MLP timestep embedding drives an adaLN
modulation in every vision layer and a (shift, scale) on the pooled image embedding, and the score
stays ``exp(logit_scale) * cos(image_emb, text_emb)``. Here the towers are MiniPickScore's
(composed, not copied) and every conv block gets a FiLM ``h * (1 + scale) + shift`` after its conv
(the convs have no attention/MLP branches, so SPO's two gates per layer have nothing to gate). As
in SPO the final modulation linears start with zero weights and zero shift/scale biases, so at init
the model equals the MiniPickScore it starts from, at every timestep. The sinusoid is SPO's (DiT's
``[cos, sin]``, 256 features); training lives in :mod:`.spm_train`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import load_file
from torch import Tensor, nn

from lightning_pref.minipick.proxy import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    MiniPickScore,
    ProxyConfig,
    save_config_and_weights,
)
from lightning_pref.scoring.base import Scorer

__all__ = ["SPMConfig", "StepAwareMiniPickScore"]


@dataclass(frozen=True)
class SPMConfig:
    """Architecture of :class:`StepAwareMiniPickScore` (saved as ``config.json``)."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    """The towers: MiniPickScore's architecture."""
    frequency_dim: int = 256
    """Width of the sinusoidal timestep features (SPO: 256)."""
    time_dim: int = 128
    """Width of the timestep embedding MLP."""
    seed: int = 1
    """Initialisation seed of the timestep layers (the towers use ``proxy.seed``)."""


def _zero_modulation(time_dim: int, width: int) -> nn.Sequential:
    """``SiLU -> Linear(time_dim, 2 * width)`` with zero weights and bias: (shift, scale) = 0."""
    linear = nn.Linear(time_dim, 2 * width)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.SiLU(), linear)


class StepAwareMiniPickScore(Scorer):
    """MiniPickScore whose image tower is FiLM-modulated by the timestep of the image it scores.

    ``timesteps=None`` scores clean images (t = 0). Gradients flow to the images.

    Args:
        config: architecture; None = :class:`SPMConfig` defaults.
    """

    def __init__(self, config: SPMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SPMConfig()
        self.proxy = MiniPickScore(config.proxy)
        widths = [m.out_channels for m in self.proxy.image_tower if isinstance(m, nn.Conv2d)]
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            # SD/DiT convention: cos first, frequencies exp(-log(10000) k / half)
            self.time_proj = Timesteps(config.frequency_dim, True, 0.0)
            self.time_embed = TimestepEmbedding(config.frequency_dim, config.time_dim)
            self.block_modulation = nn.ModuleList(
                _zero_modulation(config.time_dim, w) for w in widths
            )
            self.pooled_modulation = _zero_modulation(config.time_dim, config.proxy.embed_dim)

    @classmethod
    def from_proxy(
        cls, proxy: MiniPickScore, config: SPMConfig | None = None
    ) -> StepAwareMiniPickScore:
        """A new SPM whose towers are a copy of ``proxy`` (as SPO's SPM starts from PickScore)."""
        config = config or SPMConfig()
        model = cls(SPMConfig(proxy.config, config.frequency_dim, config.time_dim, config.seed))
        model.proxy.load_state_dict(proxy.state_dict(), strict=True)
        return model

    def tokenize(self, captions: Sequence[str]) -> Tensor:
        """``[N, L]`` word ids (see :meth:`MiniPickScore.tokenize`)."""
        return self.proxy.tokenize(captions)

    def embed_timesteps(self, timesteps: Tensor | None, n: int) -> Tensor:
        """``[N, time_dim]`` embeddings of ``[N]`` (or scalar) timesteps; None = t = 0."""
        param = self.proxy.logit_scale
        t = torch.zeros((), device=param.device) if timesteps is None else timesteps
        t = t.to(param.device, torch.float32).reshape(-1).expand(n)  # [N]
        return self.time_embed(self.time_proj(t).to(param.dtype))  # [N, T]

    def encode_images(self, images: Tensor, timesteps: Tensor | None = None) -> Tensor:
        """Unnormalised ``[N, D]`` embeddings of ``[N, 3, H, W]`` images in [-1, 1] at ``t``."""
        size = self.config.proxy.image_size
        x = images.to(self.proxy.logit_scale)  # the model's device and dtype
        if x.shape[-2:] != (size, size):  # as MiniPickScore.encode_images
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        emb = self.embed_timesteps(timesteps, x.shape[0])  # [N, T]
        block = 0
        for layer in self.proxy.image_tower:  # conv, GELU, ..., pool: FiLM after each conv
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                shift, scale = self.block_modulation[block](emb)[:, :, None, None].chunk(2, 1)
                x = x * (1 + scale) + shift  # [N, C, h, w]
                block += 1
        pooled = self.proxy.image_proj(x.flatten(1))  # [N, D]
        shift, scale = self.pooled_modulation(emb).chunk(2, dim=-1)  # [N, D] each
        return pooled * (1 + scale) + shift

    def similarity(
        self, images: Tensor, input_ids: Tensor, timesteps: Tensor | None = None
    ) -> Tensor:
        """``[T, N]`` scores of every caption (``[T, L]`` ids) against every image at its ``t``."""
        image_emb = F.normalize(self.encode_images(images, timesteps), dim=-1)  # [N, D]
        text_emb = F.normalize(self.proxy.encode_text(input_ids), dim=-1)  # [T, D]
        return self.proxy.scale() * text_emb @ image_emb.T  # [T, N]

    def score_ids(
        self, images: Tensor, input_ids: Tensor, timesteps: Tensor | None = None
    ) -> Tensor:
        """``[N]`` scores of images at ``timesteps`` against pre-tokenized captions."""
        image_emb = F.normalize(self.encode_images(images, timesteps), dim=-1)  # [N, D]
        text_emb = F.normalize(self.proxy.encode_text(input_ids), dim=-1)  # [N, D]
        return self.proxy.scale() * (image_emb * text_emb).sum(-1)  # [N]

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Return ``[N]`` scores of images ``[N, 3, H, W]`` in [-1, 1] (x̂0 at ``timesteps``).

        Raises:
            ValueError: if the number of captions differs from the number of images.
        """
        if len(captions) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images and {len(captions)} captions")
        return self.score_ids(images, self.tokenize(captions), timesteps)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        save_config_and_weights(self, asdict(self.config), folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> StepAwareMiniPickScore:
        """Load a model written by :meth:`save_pretrained` (tensors only, strict), frozen, eval."""
        folder = Path(folder)
        values = json.loads((folder / CONFIG_NAME).read_text())
        proxy = values.pop("proxy")
        proxy["channels"] = tuple(proxy["channels"])
        model = cls(SPMConfig(proxy=ProxyConfig(**proxy), **values))
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        return model.eval().requires_grad_(False)
