"""MiniPick-Flow's base as a policy (the model: :mod:`~lightning_pref.minipick.flow_model`).

:class:`MiniPickFlowPolicy` is what MiniPick-Flow's configs train
(``experiments/*_flow_minipick.yaml``): the flow base, pretrained into the asset cache on first use
(:meth:`~lightning_pref.minipick.assets.MiniPickAssets.flow_base_dir`), with the flow pairs sampled
from it (:meth:`~lightning_pref.minipick.assets.MiniPickAssets.flow_pairs_dir`).
"""

from __future__ import annotations

from pathlib import Path

from lightning_pref.minipick.flow_model import FlowUNet, load_minipick_flow_folder
from lightning_pref.minipick.policy import MiniPickPolicy
from lightning_pref.models.components import DiffusionComponents

__all__ = ["MiniPickFlowPolicy"]


class MiniPickFlowPolicy(FlowUNet, MiniPickPolicy):
    """MiniPick-Flow's pretrained base (built into the asset cache on first use) as a policy.

    Args:
        data_dir: the MiniPick asset cache; None = the default (see ``MiniPickAssets``).
        lora_rank: train LoRA adapters of this rank instead of the full UNet; None = full.
        lora_alpha: LoRA alpha; None = rank.
        timestep_sampling: ``logit_normal`` (default, SD3's), ``uniform`` or ``mode``.
        logit_mean: mean of the logit-normal.
        logit_std: standard deviation of the logit-normal.
        mode_scale: scale of the ``mode`` density.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        timestep_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
    ) -> None:
        super().__init__(data_dir=data_dir, lora_rank=lora_rank, lora_alpha=lora_alpha)
        self._init_flow(timestep_sampling, logit_mean, logit_std, mode_scale)

    def _load_components(self) -> DiffusionComponents:
        return load_minipick_flow_folder(self.assets.flow_base_dir(build=True))

    def pairs_dir(self, build: bool = True) -> Path:
        """MiniPick-Flow's pairs, sampled from this base."""
        return self.assets.flow_pairs_dir(build)
