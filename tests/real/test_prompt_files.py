"""The real prompt sets (``../shared/realfiles/prompts``) through evaluate's and the on-policy
readers: PartiPrompts (1632, category/challenge filters), DrawBench (200, quoted commas, a
category published with a trailing space) and SPO's 4000 training prompts."""

import csv

import pytest

from lightning_pref.data import PromptDataModule, load_prompts
from lightning_pref.data.prompt_files import read_prompt_file
from lightning_pref.errors import DataError
from lightning_pref.evaluation.args import parse_evaluate_args
from lightning_pref.evaluation.prompt_sets import read_prompts


@pytest.fixture(scope="module")
def prompts_dir(realfiles):
    return realfiles / "prompts"


def _rows(path, delimiter):
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))


@pytest.mark.parametrize(
    ("name", "count"),
    [("PartiPrompts.tsv", 1632), ("DrawBench.csv", 200), ("spo_4k_training_prompts.json", 4000)],
)
def test_counts_through_both_readers(prompts_dir, name, count):
    path = prompts_dir / name
    assert len(read_prompts(path)) == count  # evaluate --prompts
    assert len(load_prompts(str(path))) == count  # the on-policy prompt source
    data = PromptDataModule(train_prompts=str(path), batch_size=4, seed=0)
    data.setup("fit")
    assert len(data.train_set) == count


def test_drawbench_keeps_quoted_commas_and_matches_the_trailing_space_category(prompts_dir):
    path = prompts_dir / "DrawBench.csv"
    prompts = read_prompt_file(path)
    with_commas = [p for p in prompts if "," in p]
    assert with_commas and all(not p.startswith('"') for p in with_commas)
    assert prompts == [r["Prompts"].strip() for r in _rows(path, ",")]
    marcus = read_prompt_file(path, category="Gary Marcus et al.")  # published as "... al. "
    assert len(marcus) == 10
    assert len(read_prompts(path, category="Colors")) == 25


def test_partiprompts_filters(prompts_dir):
    path = prompts_dir / "PartiPrompts.tsv"
    abstract = read_prompts(path, category="Abstract")
    basic = read_prompts(path, challenge="Basic")
    both = read_prompts(path, category="Abstract", challenge="Basic")
    assert len(abstract) == 51 and len(basic) == 272
    assert 0 < len(both) <= min(len(abstract), len(basic))
    data = PromptDataModule(train_prompts=str(path), category="Abstract", seed=0)
    data.setup("fit")
    assert list(data.train_set.prompts) == abstract
    with pytest.raises(DataError, match="category/--challenge filter"):
        read_prompt_file(prompts_dir / "spo_4k_training_prompts.json", category="Abstract")


def test_evaluate_takes_the_filters(prompts_dir):
    args = parse_evaluate_args(
        ["--run", "runs/x", "--prompts", str(prompts_dir / "PartiPrompts.tsv"),
         "--category", "Abstract", "--challenge", "Basic"]
    )  # fmt: skip
    assert (args.category, args.challenge) == ("Abstract", "Basic")
