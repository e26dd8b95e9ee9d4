"""MiniPick DataModules: preference pairs and prompts, found in (or built into) the asset cache."""

from __future__ import annotations

from pathlib import Path

from lightning_pref.data.noise_pairs import NoisePairDataModule
from lightning_pref.data.pickapic import PickAPicDataModule
from lightning_pref.data.prompts import PromptDataModule
from lightning_pref.data.scored import ScoreLabels
from lightning_pref.errors import ConfigError
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.world import prompts

__all__ = ["MiniPickDataModule", "MiniPickNoisePairDataModule", "MiniPickPromptDataModule"]


class MiniPickDataModule(PickAPicDataModule):
    """MiniPick's preference pairs, read by the same code as Pick-a-Pic v2.

    The pairs (Pick-a-Pic v2 parquet shards) are built on first use from the cached base model and
    reused afterwards; see :mod:`lightning_pref.minipick.assets`.

    Args:
        data_dir: the MiniPick asset cache; None = ``$LIGHTNING_PREF_HOME/minipick`` or
            ``~/.cache/lightning_pref/minipick``.
        batch_size: pairs per batch.
        proportion_empty_prompts: empty-caption dropout, as in Diffusion-DPO.
        hflip: random horizontal flips (off: MiniPick captions name left and right).
        num_workers: DataLoader workers.
        seed: data-order and augmentation seed.
        val_split: which validation shard to validate on (``validation`` or
            ``validation_unique``).
        backbone: ``ddpm`` (MiniPick's base) or ``flow`` (MiniPick-Flow's pairs, sampled from
            its flow base; see :mod:`lightning_pref.minipick.flow`).
        max_val_pairs: cap on validation pairs.
        drop_ties: drop the rater's tied pairs (Diffusion-DPO); False keeps them with
            ``pref_prob`` 0.5 (Diffusion-NPO's official runs keep ties).
        score_labels: SmPO's label smoothing: train on a copy of the pairs scored by the proxy
            reward (MiniPickScore; built on first use, see ``MiniPickAssets.scored_pairs_dir``).
            The proxy is not on PickScore's scale, so pass ``{score_min: null, score_max: null}``
            (the observed range, from the copy's ``scores.json``), not SmPO's defaults.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 32,
        proportion_empty_prompts: float = 0.0,
        hflip: bool = False,
        num_workers: int = 0,
        seed: int | None = None,
        val_split: str = "validation",
        max_val_pairs: int | None = None,
        score_labels: ScoreLabels | None = None,
        drop_ties: bool = True,
        backbone: str = "ddpm",
    ) -> None:
        if backbone not in ("ddpm", "flow"):
            raise ConfigError(f"MiniPickDataModule(backbone='{backbone}'): use 'ddpm' or 'flow'")
        self.assets = MiniPickAssets(data_dir)
        self.backbone = backbone
        self.scored = score_labels is not None
        pairs = self._pairs(build=False)
        super().__init__(
            train_files=str(pairs / "train"),
            val_files=str(pairs / val_split),
            resolution=self.assets.image_size,
            batch_size=batch_size,
            proportion_empty_prompts=proportion_empty_prompts,
            hflip=hflip,
            num_workers=num_workers,
            seed=seed,
            max_val_pairs=max_val_pairs,
            score_labels=score_labels,
            drop_ties=drop_ties,
        )

    def _pairs(self, build: bool) -> Path:
        """The pairs folder in use: the proxy-scored copy with ``score_labels``, else the pairs."""
        if self.backbone == "flow":
            if self.scored:
                return self.assets.flow_scored_pairs_dir(build)
            return self.assets.flow_pairs_dir(build)
        return self.assets.scored_pairs_dir(build) if self.scored else self.assets.pairs_dir(build)

    def prepare_data(self) -> None:
        """Build the base model and the pairs if the cache lacks them (one process builds)."""
        self._pairs(build=True)

    def setup(self, stage: str | None = None) -> None:
        """Make sure the pairs exist (also in processes that skipped ``prepare_data``)."""
        self._pairs(build=True)
        super().setup(stage)

    @property
    def pairs_path(self) -> Path:
        """Folder of the parquet shards (the scored copy with ``score_labels``)."""
        return self._pairs(build=False)


class MiniPickPromptDataModule(PromptDataModule):
    """MiniPick prompts for on-policy methods: the training split, validated on held-out prompts.

    Args:
        batch_size: prompts per generation round and per device.
        val_batch_size: prompts per validation round; default ``batch_size``.
        max_val_prompts: use only the first this many validation prompts.
        seed: seed of the shuffle.
        train_split: MiniPick prompt split to train on.
        val_split: prompt split to validate on (None: no validation).
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        max_val_prompts: int | None = None,
        seed: int | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
    ) -> None:
        super().__init__(None, None, batch_size, val_batch_size, max_val_prompts, seed)
        self.train_split, self.val_split = train_split, val_split

    def load_train(self) -> list[str]:
        """The MiniPick prompts of ``train_split``."""
        return prompts(self.train_split)

    def load_val(self) -> list[str] | None:
        """The MiniPick prompts of ``val_split``, or None."""
        return None if self.val_split is None else prompts(self.val_split)


class MiniPickNoisePairDataModule(NoisePairDataModule):
    """MiniPick-Flow's noise-tracked pairs (PNAPO), built into the asset cache on first use.

    Args:
        data_dir: the MiniPick asset cache; None = the default (see ``MiniPickAssets``).
        batch_size: pairs per batch.
        num_workers: DataLoader workers.
        seed: shuffle seed; None: the run's ``--seed_everything``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        self.assets = MiniPickAssets(data_dir)
        train = self.assets.flow_noise_pairs_dir(build=False) / "train"
        super().__init__(str(train), None, batch_size, None, num_workers, 0.0, seed)

    def prepare_data(self) -> None:
        """Build the flow base, the proxy and the pairs if the cache lacks them."""
        self.assets.flow_noise_pairs_dir(build=True)

    def setup(self, stage: str | None = None) -> None:
        """Make sure the pairs exist (also in processes that skipped ``prepare_data``)."""
        self.assets.flow_noise_pairs_dir(build=True)
        super().setup(stage)
