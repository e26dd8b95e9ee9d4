"""Prompt sets for `evaluate --prompts` (text, HPDv2, Pick-a-Pic, PartiPrompts) and eval configs."""

import json
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightning_pref.__main__ import main
from lightning_pref.cli import dataclass_parser
from lightning_pref.errors import DataError
from lightning_pref.evaluation.args import EvaluateArgs, parse_evaluate_args
from lightning_pref.evaluation.prompt_sets import read_prompts
from lightning_pref.evaluation.prompt_sets import read_prompts as runs_read_prompts
from lightning_pref.evaluation.setup import prepare_evaluation
from lightning_pref.minipick import prompts as minipick_prompts
from lightning_pref.scoring import Scorer

ROOT = Path(__file__).parents[1]
PICKAPIC_VAL = ROOT / "tests" / "assets" / "pickapic_tiny" / "validation_unique"


def _shard(path: Path, captions: list[str]) -> Path:
    """A Pick-a-Pic-like shard: the caption column among others (images are not read)."""
    table = pa.table(
        {
            "caption": captions,
            "label_0": [1.0] * len(captions),
            "jpg_0": [b"not an image"] * len(captions),
        }
    )
    pq.write_table(table, path)
    return path


def test_text_file_one_prompt_per_line(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \na red circle\n")
    # text files are used as given: duplicates stay, blank lines and outer spaces go
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square", "a red circle"]
    assert runs_read_prompts is read_prompts  # still importable from lightning_pref.runs
    assert read_prompts(None) == minipick_prompts("test")
    assert read_prompts(None, max_prompts=3) == minipick_prompts("test")[:3]


def test_json_list_hpdv2_test_json_and_styles(tmp_path):
    (tmp_path / "list.json").write_text('["x", " y "]')
    assert read_prompts(tmp_path / "list.json") == ["x", "y"]
    hpd = [{"prompt": "a cat", "image_path": ["0.jpg"], "rank": [1]}, {"prompt": "a dog"}]
    (tmp_path / "test.json").write_text(json.dumps(hpd))
    assert read_prompts(tmp_path / "test.json") == ["a cat", "a dog"]
    styles = {"anime": ["a1", "a2"], "photo": ["p1"]}
    (tmp_path / "styles.json").write_text(json.dumps(styles))
    assert read_prompts(tmp_path / "styles.json") == ["a1", "a2", "p1"]


def test_hpdv2_benchmark_folder_reads_every_style_in_sorted_order(tmp_path):
    bench = tmp_path / "benchmark"
    bench.mkdir()
    for style, prompts in (("photo", ["p1", "p2"]), ("anime", ["a1", "a1"])):
        (bench / f"{style}.json").write_text(json.dumps(prompts))
    assert read_prompts(bench) == ["a1", "a1", "p1", "p2"]  # not de-duplicated
    assert read_prompts(bench, max_prompts=3) == ["a1", "a1", "p1"]


def test_json_errors_name_the_file_and_the_expected_layout(tmp_path):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON list of strings"):
        read_prompts(tmp_path / "bad.json")
    (tmp_path / "objs.json").write_text('[{"title": "a"}]')
    with pytest.raises(DataError, match="'caption', 'prompt' or 'text' key"):
        read_prompts(tmp_path / "objs.json")
    (tmp_path / "texts.json").write_text('[{"text": "a"}, {"caption": "b"}]')  # SPO: caption
    assert read_prompts(tmp_path / "texts.json") == ["a", "b"]
    (tmp_path / "torn.json").write_text('["a", ')
    with pytest.raises(DataError, match="not valid JSON"):
        read_prompts(tmp_path / "torn.json")


def test_pickapic_parquet_captions_are_deduplicated_in_order(tmp_path):
    shard = _shard(tmp_path / "val.parquet", ["b cat", "a dog", "b cat", " ", "c owl", "a dog"])
    assert read_prompts(shard) == ["b cat", "a dog", "c owl"]
    assert read_prompts(shard, max_prompts=2) == ["b cat", "a dog"]
    split = tmp_path / "validation_unique"
    split.mkdir()
    _shard(split / "part-00001.parquet", ["c owl", "d fox"])
    _shard(split / "part-00000.parquet", ["a dog", "c owl"])
    assert read_prompts(split) == ["a dog", "c owl", "d fox"]  # shards in sorted order


def test_committed_pickapic_split_gives_its_distinct_captions():
    expected = pq.read_table(next(PICKAPIC_VAL.glob("*.parquet")), columns=["caption"])
    captions = [c.strip() for c in expected.column(0).to_pylist() if c.strip()]
    prompts = read_prompts(PICKAPIC_VAL)
    assert prompts == list(dict.fromkeys(captions))
    assert len(set(prompts)) == len(prompts) > 1


def test_parquet_without_caption_column_is_one_line_error(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no 'caption' column") as info:
        read_prompts(tmp_path / "x.parquet")
    assert "\n" not in str(info.value)
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_prompts(tmp_path / "fake.parquet")


def test_partiprompts_tsv_takes_the_prompt_column(tmp_path):
    rows = [
        "Prompt\tCategory\tChallenge\tNote",
        "bond\tAbstract\tBasic\t",
        'A sign that says "Hello"\tWorld Knowledge\tWriting & Symbols\ta note',
        '"a ""quoted"" field"\tArts\tBasic\t',
        "bond\tAbstract\tBasic\t",
    ]
    (tmp_path / "PartiPrompts.tsv").write_text("\n".join(rows) + "\n")
    # inner quotes are kept; a CSV-quoted field is unquoted; rows are used as published
    assert read_prompts(tmp_path / "PartiPrompts.tsv") == [
        "bond",
        'A sign that says "Hello"',
        'a "quoted" field',
        "bond",
    ]
    (tmp_path / "other.tsv").write_text("text\tx\nabc\t1\n")
    with pytest.raises(DataError, match="no 'Prompt' column"):
        read_prompts(tmp_path / "other.tsv")


def test_unknown_format_missing_file_and_empty_set_are_one_line_errors(tmp_path):
    (tmp_path / "p.xml").write_text("a,b\n")
    with pytest.raises(DataError) as info:
        read_prompts(tmp_path / "p.xml")
    message = str(info.value)
    assert "unknown format" in message and ".csv (DrawBench)" in message and "\n" not in message
    with pytest.raises(DataError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="holds no .parquet or .json"):
        read_prompts(tmp_path / "empty_dir")
    with pytest.raises(DataError, match="max_prompts must be at least 1"):
        read_prompts(tmp_path / "p.xml", max_prompts=0)


def test_example_eval_configs_parse_with_every_reward_scorer():
    """experiments/eval/*.yaml: class paths and argument names check at parse time (no weights)."""
    configs = sorted((ROOT / "experiments" / "eval").glob("*.yaml"))
    assert ROOT / "experiments" / "eval" / "sd15_partiprompts.yaml" in configs
    for config in configs:
        assert config.read_text().startswith("# ") and "Run:" in config.read_text()
        parser = dataclass_parser(EvaluateArgs, "evaluate", config_file=True)
        parsed = parser.parse_args(["--config", str(config), "--run", "runs/x"])
        scorers = {name: s["class_path"] for name, s in parsed.scorers.items()}
        assert parsed.gold in scorers
        if config.name == "sd15_partiprompts.yaml":
            assert (parsed.num_steps, parsed.guidance_scale, parsed.eta) == (20, 5.0, 0.0)
            assert parsed.prompts.endswith("PartiPrompts.tsv")
            assert scorers == {
                "pickscore": "lightning_pref.scoring.PretrainedPickScore",
                "hpsv2": "lightning_pref.scoring.HPSv2",
                "imagereward": "lightning_pref.scoring.ImageReward",
                "aesthetic": "lightning_pref.scoring.LAIONAesthetic",
                "clipscore": "lightning_pref.scoring.CLIPScore",
            }


class Brightness(Scorer):
    def forward(self, images, captions, timesteps=None):
        return images.float().mean(dim=(1, 2, 3))


def test_evaluate_cli_on_pickapic_prompts_with_the_default_sampler(tmp_path, monkeypatch):
    """A 2-step tiny DPO run evaluated on the committed Pick-a-Pic split (first 2 distinct
    captions, cycled); no --num_steps: 20 for a non-MiniPick model (METHODS §2.5)."""
    monkeypatch.chdir(ROOT)  # the config names its data relative to the repo root
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # so class_path finds Brightness
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            main(
                ["fit", "--config", "tests/configs/tiny_dpo.yaml", "--trainer.max_steps", "2"]
                + ["--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0"]
                + ["--trainer.enable_progress_bar", "false"]
                + ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
            )
        scorers = json.dumps({"b": {"class_path": f"{Brightness.__module__}.Brightness"}})
        argv = ["--run", str(tmp_path / "runs" / "tiny_dpo"), "--prompts", str(PICKAPIC_VAL)]
        argv += ["--max_prompts", "2", "--scorers", scorers, "--gold", "b", "--implicit_draws", "0"]
        out = tmp_path / "eval"
        main(["evaluate", *argv, "--out", str(out), "--num_samples", "4"])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((out / "report.json").read_text())
    assert (report["num_prompts"], report["num_steps"], report["guidance_scale"]) == (2, 20, 5.0)
    assert set(report["scores"]["b"]) >= {"base_median", "tuned_median", "win_rate", "win_rate_ci"}
    legend = (out / "grid.txt").read_text().splitlines()[1:]
    assert legend == [f"{i + 1}. {p}" for i, p in enumerate(read_prompts(PICKAPIC_VAL, 2) * 2)]
    args = parse_evaluate_args(argv)
    assert args.num_steps is None
    prepare_evaluation(args)
    assert args.num_steps == 20  # filled in: the leaderboard's base cache reads it from args
