"""CaPO's calibrated MiniPick pairs as a DataModule, and the command that writes them anywhere.

The pairs (base-model samples scored by the proxy and the aesthetic reward, upper Pareto front
paired with the lower one) are built by :mod:`lightning_pref.minipick.capo_pairs`.
:class:`MiniPickCaPODataModule` builds the folder on first use in the MiniPick cache
(:meth:`~lightning_pref.minipick.assets.MiniPickAssets.capo_dir`: keyed by the base model, the
proxy and the settings, sealed like the other assets) and reads it with
:class:`~lightning_pref.data.PairFolderDataModule`. ``python -m lightning_pref.minipick.capo_data
--out DIR`` writes the same folder anywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lightning_pref.data.folder import PairFolderDataModule
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.capo_pairs import CaPOSettings
from lightning_pref.minipick.store import AssetSettings

__all__ = ["MiniPickCaPODataModule", "main"]


class MiniPickCaPODataModule(PairFolderDataModule):
    """CaPO's calibrated MiniPick pairs, built on first use (see the module docstring).

    Args:
        root: a folder written by ``python -m lightning_pref.minipick.capo_data --out DIR``;
            None: build (once) and use ``capo-<key>`` in the MiniPick cache.
        data_dir: the MiniPick asset cache; None = the default (see ``MiniPickAssets``).
        samples_per_prompt: N, samples per prompt.
        pairs_per_prompt: pairs kept per prompt; None = every front pair.
        multi_reward: proxy + aesthetic (True) or the proxy alone.
        build_seed: seed of the sampling and of the pair draws.
        max_prompts: build from the first this many prompts per split (quick tests).
        batch_size: pairs per batch.
        proportion_empty_prompts: empty-caption dropout.
        num_workers: DataLoader workers.
        seed: data-order seed; None: the run's ``--seed_everything``.
        max_val_pairs: cap on validation pairs.
    """

    def __init__(
        self,
        root: str | None = None,
        data_dir: str | None = None,
        samples_per_prompt: int = 8,
        pairs_per_prompt: int | None = 4,
        multi_reward: bool = True,
        build_seed: int = 0,
        max_prompts: int | None = None,
        batch_size: int = 32,
        proportion_empty_prompts: float = 0.0,
        num_workers: int = 0,
        seed: int | None = None,
        max_val_pairs: int | None = None,
    ) -> None:
        self.capo_settings = CaPOSettings(
            samples_per_prompt,
            pairs_per_prompt,
            build_seed,
            multi_reward=multi_reward,
            max_prompts=max_prompts,
        )
        self.data_dir, self.build_on_use = data_dir, root is None
        self.assets = MiniPickAssets(data_dir)
        if root is not None:
            folder = Path(root)
        else:
            folder = self.assets.capo_dir(self.capo_settings, build=False)
        super().__init__(
            root=str(folder),
            resolution=AssetSettings().image_size,
            hflip=False,  # captions name left and right
            proportion_empty_prompts=proportion_empty_prompts,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            max_val_pairs=max_val_pairs,
        )

    def _ensure(self) -> None:
        if self.build_on_use:
            self.assets.capo_dir(self.capo_settings, build=True)

    def prepare_data(self) -> None:
        """Build the CaPO folder if the cache lacks it, then check the CSV."""
        self._ensure()
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Make sure the folder exists (also in processes that skipped ``prepare_data``)."""
        self._ensure()
        super().setup(stage)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m lightning_pref.minipick.capo_data --out DIR``: write a CaPO pair folder."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder to write (images, pairs.csv)")
    parser.add_argument("--data_dir", default=None, help="MiniPick asset cache")
    parser.add_argument("--samples_per_prompt", type=int, default=8)
    parser.add_argument("--pairs_per_prompt", type=int, default=4, help="0: every front pair")
    parser.add_argument("--single_reward", action="store_true", help="the proxy alone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = CaPOSettings(
        args.samples_per_prompt, args.pairs_per_prompt or None, args.seed,
        multi_reward=not args.single_reward,
    )  # fmt: skip
    info = MiniPickAssets(args.data_dir).write_capo(Path(args.out), settings)
    print(json.dumps({k: v for k, v in info.items() if k != "settings"}, indent=1))
    return info


if __name__ == "__main__":
    main()
