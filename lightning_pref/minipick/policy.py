"""The MiniPick base model as a policy: loaded from the asset cache, built on first use."""

from __future__ import annotations

from pathlib import Path

from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.loading import load_components
from lightning_pref.models.policy import DiffusionPolicy

__all__ = ["MiniPickPolicy"]


class MiniPickPolicy(DiffusionPolicy):
    """MiniPick's pretrained pixel-space model, through the same SD-folder loader as SD1.5.

    Args:
        data_dir: the MiniPick asset cache; None = the default (see ``MiniPickAssets``).
        lora_rank: train LoRA adapters of this rank instead of the full UNet; None = full.
        lora_alpha: LoRA alpha; None = rank.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
    ) -> None:
        super().__init__(
            pretrained="<minipick>", lora_rank=lora_rank, lora_alpha=lora_alpha, check_source=False
        )
        self.assets = MiniPickAssets(data_dir)

    def _load_components(self) -> DiffusionComponents:
        return load_components(str(self.assets.base_dir(build=True)))

    def pairs_dir(self, build: bool = True) -> Path:
        """The pairs sampled from this base model (MiniPick-Flow's policy has its own)."""
        return self.assets.pairs_dir(build)
