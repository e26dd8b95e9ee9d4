"""The pair DataModules share one loader base, and the parquet helpers stand on their own."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_pref.data import (
    CachedPairDataModule,
    PairDataModule,
    PairFolderDataModule,
    PickAPicDataModule,
    check_parquet_columns,
    local_split_files,
)
from lightning_pref.data.sampler import ResumableDataLoader
from lightning_pref.errors import DataError

PAIR_MODULES = [PickAPicDataModule, PairFolderDataModule, CachedPairDataModule]


@pytest.mark.parametrize("cls", PAIR_MODULES, ids=lambda c: c.__name__)
def test_pair_datamodules_take_their_loaders_from_the_base(cls):
    assert issubclass(cls, PairDataModule)
    for name in ("train_dataloader", "val_dataloader"):
        assert name not in vars(cls), f"{cls.__name__} redefines {name}"


def test_the_base_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        PairDataModule(1, None, 0, 0, None)


def test_map_and_stream_training_loaders(tiny_dir):
    """Map-style data gets the seeded sampler; a stream gets consumer_prefetch=1."""
    kwargs = {"train_files": str(tiny_dir / "train"), "resolution": 16, "seed": 3}
    mapped = PickAPicDataModule(**kwargs, batch_size=4).train_dataloader()
    assert isinstance(mapped, ResumableDataLoader) and mapped.consumer_prefetch == 0
    assert mapped.sampler.seed == 3 and mapped.drop_last
    stream = PickAPicDataModule(**kwargs, batch_size=4, streaming=True).train_dataloader()
    assert isinstance(stream, ResumableDataLoader) and stream.consumer_prefetch == 1


def test_no_validation_gives_an_empty_list(tiny_dir):
    data = PickAPicDataModule(train_files=str(tiny_dir / "train"), resolution=16)
    assert data.val_dataloader() == []


def test_check_parquet_columns_names_the_first_bad_file(tmp_path, train_rows):
    good, bad = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(train_rows[:2]), good)
    pq.write_table(pa.Table.from_pylist(train_rows[:2]).drop_columns(["caption"]), bad)
    check_parquet_columns([str(good)])
    with pytest.raises(DataError, match="b.parquet' is missing the column\\(s\\) caption"):
        check_parquet_columns([str(good), str(bad)])
    with pytest.raises(DataError, match="a.parquet' has no column\\(s\\) score_0, score_1"):
        check_parquet_columns([str(good), str(bad)], scored=True)


def test_local_split_files_finds_both_layouts(tmp_path, tiny_dir):
    assert local_split_files(str(tiny_dir), "train") == sorted(
        str(p) for p in (tiny_dir / "train").glob("*.parquet")
    )
    with pytest.raises(DataError, match="no parquet shards for split 'nope'"):
        local_split_files(str(tmp_path), "nope")
