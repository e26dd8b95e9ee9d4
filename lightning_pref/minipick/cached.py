"""The MiniPick classes that find their inputs in the asset cache (building them on first use).

The configs name these: :class:`SPMModule` and :class:`SPMDataModule` train the step-aware
preference model from the cached proxy and pairs (``experiments/spm_minipick.yaml``), and
:class:`MiniPickSPM` is the cached step-aware model as a frozen reward. The classes they extend
take explicit folders, which is how :class:`~lightning_pref.minipick.assets.MiniPickAssets` builds
the same assets without depending on itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_pref.errors import ConfigError
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.spm import StepAwareMiniPickScore
from lightning_pref.minipick.spm_data import (
    SPMPairsDataModule,
)
from lightning_pref.minipick.spm_train import SPMTrainingModule
from lightning_pref.scoring.base import Scorer

__all__ = ["MiniPickSPM", "SPMDataModule", "SPMModule"]


class SPMModule(SPMTrainingModule):
    """The SPM training module, started from the cached proxy of ``data_dir`` by default.

    The arguments are :class:`~lightning_pref.minipick.spm_train.SPMTrainingModule`'s; without
    ``proxy_dir`` the proxy asset of ``data_dir`` is used (built on first use).
    """

    def proxy_path(self) -> Path:
        """``proxy_dir``, else the proxy asset of ``data_dir`` (built on first use)."""
        if self.proxy_dir is not None:
            return Path(self.proxy_dir)
        return MiniPickAssets(self.data_dir).proxy_dir(build=True)


class SPMDataModule(SPMPairsDataModule):
    """The SPM data module, on the cached pairs of ``data_dir`` by default.

    The arguments are :class:`~lightning_pref.minipick.spm_data.SPMPairsDataModule`'s; without
    ``pairs_dir`` the pairs asset of ``data_dir`` is read (built on first use).
    """

    def pairs_path(self) -> Path:
        """``pairs_dir``, else the pairs asset of ``data_dir`` (built on first use)."""
        if self.pairs_dir is not None:
            return Path(self.pairs_dir)
        return MiniPickAssets(self.data_dir).pairs_dir(build=True)


class MiniPickSPM(Scorer):
    """The step-aware MiniPick preference model as a frozen :class:`Scorer`.

    It is loaded (the asset built on first use) when constructed, i.e. when the CLI instantiates
    the config, before training starts: building it inside a training step would nest its own
    Trainer in the outer one. ``--print_config`` does not construct it. Weights are frozen and in
    eval mode, but scores stay differentiable with respect to the images (TailorPO-G follows
    their gradient).

    Args:
        data_dir: the MiniPick asset cache; None = the default. The SPM asset (and the base
            model, pairs and proxy it depends on) is built there on first use.
        pretrained: an exported SPM folder (``config.json`` + ``model.safetensors``, e.g. the
            ``spm/`` folder of a ``spm_minipick.yaml`` run) to use instead of the asset.
        levels: what the ``timesteps`` it is given mean: ``ddpm`` (MiniPick's DDPM levels, what
            the SPM was trained on) or ``flow`` (MiniPick-Flow's levels, σ = (t + 1)/1000; each
            is read as the DDPM level of the same signal-to-noise ratio, :func:`ddpm_level_of_flow`:
            our mapping, the SPM was never trained on flow states).
    """

    def __init__(
        self, data_dir: str | None = None, pretrained: str | None = None, levels: str = "ddpm"
    ) -> None:
        super().__init__()
        if levels not in ("ddpm", "flow"):
            raise ConfigError(f"MiniPickSPM(levels='{levels}'): use 'ddpm' or 'flow'")
        self.data_dir = data_dir
        self.pretrained = pretrained
        self.levels = levels
        self.model: StepAwareMiniPickScore | None = None
        self.load()

    def load(self) -> StepAwareMiniPickScore:
        """Load (building the asset if needed) and return the model; later calls reuse it."""
        if self.model is None:
            if self.pretrained is not None:
                folder = Path(self.pretrained)
            else:
                folder = MiniPickAssets(self.data_dir).spm_dir(build=True)
            self.model = StepAwareMiniPickScore.from_pretrained(folder)  # frozen, eval
        return self.model

    def train(self, mode: bool = True) -> MiniPickSPM:
        """Keep the loaded model in eval mode whatever the parent module's mode."""
        super().train(mode)
        if self.model is not None:
            self.model.eval()
        return self

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Step-aware scores ``[N]`` of images (x̂0) in [-1, 1] at ``timesteps`` (None = 0)."""
        model = self.load()
        if model.proxy.logit_scale.device != images.device:  # loaded after the parent's .to()
            model.to(images.device)
        if self.levels == "flow" and timesteps is not None:
            timesteps = ddpm_level_of_flow(timesteps)
        return model(images, list(captions), timesteps)


def ddpm_level_of_flow(timesteps: Tensor) -> Tensor:
    """MiniPick-Flow levels ``[N]`` → the MiniPick DDPM levels of the same signal-to-noise ratio.

    Flow level t has σ = (t + 1)/1000 (shift 1) and SNR ((1 − σ)/σ)²; DDPM level t' has
    ᾱ/(1 − ᾱ) on MiniPick's linear schedule (1e-4 → 0.02, 1000 levels). Each t maps to the t'
    whose log-SNR is nearest. E.g. t = 499 (σ = 0.5, SNR 1) → t' = 258 (ᾱ ≈ 0.50).
    """
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)  # [1000]
    log_snr_ddpm = (abar / (1 - abar)).log()  # [1000], descending
    sigma = (timesteps.double().cpu() + 1) / 1000
    log_snr_flow = 2 * ((1 - sigma).clamp_min(1e-12) / sigma).log()  # [N]
    nearest = (log_snr_ddpm[None, :] - log_snr_flow[:, None]).abs().argmin(1)  # [N]
    return nearest.to(timesteps.device)
