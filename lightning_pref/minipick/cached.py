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

from torch import Tensor

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
    """

    def __init__(self, data_dir: str | None = None, pretrained: str | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.pretrained = pretrained
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
        return model(images, list(captions), timesteps)
