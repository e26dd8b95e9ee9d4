"""Prompt sources for on-policy methods: files, Pick-a-Pic captions, lists; sharding and resume."""

import json
from pathlib import Path

import pytest

from lightning_pref.data import PromptDataModule, load_prompts
from lightning_pref.errors import DataError
from lightning_pref.minipick import MiniPickPromptDataModule, prompts

ASSETS = Path(__file__).parents[1] / "assets" / "pickapic_tiny"


def test_text_file_drops_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red circle\n\n  a blue square  \n")
    assert load_prompts(str(path)) == ["a red circle", "a blue square"]


def test_json_list_of_strings_and_of_objects(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "b.json").write_text(json.dumps([{"caption": "x"}, {"prompt": "y"}]))
    (tmp_path / "c.json").write_text(json.dumps({"prompts": ["z"]}))
    assert load_prompts(str(tmp_path / "a.json")) == ["x", "y"]
    assert load_prompts(str(tmp_path / "b.json")) == ["x", "y"]
    assert load_prompts(str(tmp_path / "c.json")) == ["z"]


def test_pickapic_parquet_gives_unique_captions_in_order():
    import pyarrow.parquet as pq

    files = sorted(ASSETS.rglob("*.parquet"))
    captions = [c for f in files for c in pq.read_table(f).column("caption").to_pylist()]
    expected = list(dict.fromkeys(c.strip() for c in captions if c.strip()))
    assert load_prompts(str(ASSETS)) == expected
    assert len(expected) > 1


@pytest.mark.parametrize("bad", ["missing.txt", "missing.json"])
def test_missing_file_is_a_clear_error(tmp_path, bad):
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(str(tmp_path / bad))


def test_empty_source_is_an_error(tmp_path):
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(str(tmp_path / "e.txt"))


def test_batches_shard_across_ranks_and_cover_the_epoch():
    data = PromptDataModule(train_prompts=[f"p{i}" for i in range(8)], batch_size=2, seed=3)
    seen = []
    for rank in (0, 1):
        loader = data.train_dataloader()
        loader.sampler.rank, loader.sampler.world_size = rank, 2
        seen.append([c for batch in loader for c in batch.captions])
    assert len(seen[0]) == len(seen[1]) == 4
    assert sorted(seen[0] + seen[1]) == sorted(f"p{i}" for i in range(8))


def test_loader_resumes_mid_epoch():
    data = PromptDataModule(train_prompts=[f"p{i}" for i in range(10)], batch_size=2, seed=0)
    loader = data.train_dataloader()
    full = [b.captions for b in loader]
    loader = data.train_dataloader()
    it = iter(loader)
    first = [next(it).captions for _ in range(2)]
    state = loader.state_dict()
    resumed = data.train_dataloader()
    resumed.load_state_dict(state)
    assert first + [b.captions for b in resumed] == full


def test_minipick_prompts_use_the_splits():
    data = MiniPickPromptDataModule(batch_size=4)
    data.setup("fit")
    assert data.train_set.prompts == prompts("train")
    assert data.val_set.prompts == prompts("validation")
    assert not set(prompts("train")) & set(prompts("test"))
