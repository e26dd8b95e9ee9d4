import json

import pyarrow.parquet as pq
import pytest

from lightning_pref.data import PickAPicDataModule
from lightning_pref.data.fake import PICKAPIC_SCHEMA
from lightning_pref.minipick.assets import MiniPickAssets
from lightning_pref.minipick.store import MANIFEST, AssetSettings, ensure_asset, is_complete

TINY = AssetSettings(
    base_source="train",
    base_steps=3,
    base_batch_size=8,
    num_train_pairs=50,
    num_val_pairs=8,
    sample_steps=2,
    max_unique_pairs=4,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    a = MiniPickAssets(tmp_path_factory.mktemp("minipick"), TINY)
    a.pairs_dir(build=True)
    return a


def test_base_model_is_an_sd_folder_without_vae(assets):
    base = assets.base_dir(build=False)
    assert is_complete(base)
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        assert (base / sub).is_dir()
    assert not (base / "vae").exists()
    from lightning_pref.models import DiffusionPolicy

    policy = DiffusionPolicy(pretrained=str(base))
    policy.build()
    assert policy.vae is None
    assert policy.tokenizer("a large red circle on the left").input_ids[0] == 2  # [BOS]


def test_pairs_have_pickapic_schema_and_splits(assets):
    pairs = assets.pairs_dir(build=False)
    counts = {"train": 50, "validation": 8, "validation_unique": 4, "test_unique": 4}
    for split, n in counts.items():
        files = sorted((pairs / split).glob("*.parquet"))
        assert len(files) == 1
        table = pq.read_table(files[0])
        assert table.schema.equals(PICKAPIC_SCHEMA), split
        assert table.num_rows == n
        labels = table.column("label_0").to_pylist()
        assert set(labels) <= {0.0, 0.5, 1.0}
        assert table.column("label_1").to_pylist() == [1.0 - x for x in labels]


def test_tie_fraction_matches_the_target_rate(assets):
    info = json.loads((assets.pairs_dir(build=False) / MANIFEST).read_text())["info"]
    labels = pq.read_table(next((assets.pairs_dir(build=False) / "train").glob("*.parquet")))
    ties = labels.column("label_0").to_pylist().count(0.5) / labels.num_rows
    assert ties == pytest.approx(info["train"]["ties"])
    assert 0.06 <= ties <= 0.18  # 12% of 50 pairs, by construction of the margin


def test_pairs_read_back_by_the_pickapic_datamodule(assets):
    pairs = assets.pairs_dir(build=False)
    dm = PickAPicDataModule(
        train_files=str(pairs / "train"),
        resolution=16,
        batch_size=4,
        hflip=False,
        proportion_empty_prompts=0.0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.pixels_w.shape == (4, 3, 16, 16)
    assert batch.num_skipped == 0


def test_second_use_reuses_and_half_written_is_rebuilt(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"x" * 100)
        return {}

    folder = tmp_path / "asset"
    ensure_asset(folder, build, "test asset")
    ensure_asset(folder, build, "test asset")
    assert len(calls) == 1
    (folder / "weights.bin").write_bytes(b"x" * 50)  # truncated copy
    assert not is_complete(folder)
    ensure_asset(folder, build, "test asset")
    assert len(calls) == 2 and is_complete(folder)
    (folder / MANIFEST).unlink()  # interrupted before the manifest was written
    ensure_asset(folder, build, "test asset")
    assert len(calls) == 3


def test_settings_change_the_folder_name(tmp_path):
    a = MiniPickAssets(tmp_path, AssetSettings())
    b = MiniPickAssets(tmp_path, AssetSettings(num_train_pairs=10))
    assert a.base_dir(build=False) == b.base_dir(build=False)
    assert a.pairs_dir(build=False) != b.pairs_dir(build=False)


def test_minipick_base_against_itself_is_exactly_half_and_deterministic(assets):
    from lightning_pref.evaluation.compare import SamplingOptions, evaluate_policies
    from lightning_pref.evaluation.scorers import GoldScorer
    from lightning_pref.minipick.world import prompts
    from lightning_pref.models import DiffusionPolicy

    base = DiffusionPolicy(pretrained=str(assets.base_dir(build=False)))
    base.build()
    kwargs = dict(
        prompts=prompts("test"),
        scorers={"gold": GoldScorer()},
        gold="gold",
        num_samples=24,
        seed=3,
        options=SamplingOptions(
            num_steps=3, samples_per_prompt_for_diversity=2, num_diversity_prompts=2
        ),
    )
    first = evaluate_policies(base, base, **kwargs)
    assert first.win_rate == 0.5 and first.ties == 24
    assert first.win_rate_ci == (0.5, 0.5)
    assert evaluate_policies(base, base, **kwargs).to_json() == first.to_json()
