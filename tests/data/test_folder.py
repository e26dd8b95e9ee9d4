"""PairFolderDataModule: an image folder with a CSV gives the batches Pick-a-Pic parquet gives."""

import csv
import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch.testing import assert_close

from lightning_pref.__main__ import main
from lightning_pref.data import (
    ImageTransform,
    PairFolderDataModule,
    PickAPicDataModule,
    decode_image,
    read_pair_csv,
)
from lightning_pref.errors import DataError

ROOT = Path(__file__).parents[2]
FOLDER = ROOT / "tests" / "assets" / "pair_folder"
TINY_FOLDER = ROOT / "tests" / "configs" / "tiny_dpo_folder.yaml"
HEADER = "caption,image_w,image_l,label,split\n"


def write_parquet(csv_path: Path, out: Path, split: str = "train") -> Path:
    """The same pairs as a Pick-a-Pic v2 shard: jpg_0 = image_w's bytes, label_0 = label."""
    rows = read_pair_csv(csv_path)[split]
    table = pa.table(
        {
            "caption": [r.caption for r in rows],
            "jpg_0": [r.path_w.read_bytes() for r in rows],
            "jpg_1": [r.path_l.read_bytes() for r in rows],
            "label_0": [r.label for r in rows],
            "label_1": [1.0 - r.label for r in rows],
        }
    )
    pq.write_table(table, out)
    return out


def epochs_of_batches(loader, num_epochs: int = 2) -> list:
    return [batch for _ in range(num_epochs) for batch in loader]


def assert_same_batches(got: list, expected: list) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert_close(a.pixels_w, b.pixels_w, rtol=0, atol=0)
        assert_close(a.pixels_l, b.pixels_l, rtol=0, atol=0)
        assert_close(a.pref_prob, b.pref_prob, rtol=0, atol=0)
        assert a.captions == b.captions
        assert a.num_skipped == b.num_skipped


def copy_folder(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FOLDER, tmp_path / "pairs"))


def write_csv(folder: Path, lines: list[str], header: str = HEADER) -> Path:
    path = folder / "pairs.csv"
    path.write_text(header + "".join(line + "\n" for line in lines))
    return path


AUGMENT = {"resolution": 12, "random_crop": True, "hflip": True, "proportion_empty_prompts": 0.5}


@pytest.mark.parametrize("drop_ties", [False, True])
def test_batches_equal_pickapic_parquet_of_the_same_pairs(tmp_path, drop_ties):
    """Two epochs of shuffled, cropped, flipped, caption-dropped batches, exactly equal."""
    folder = copy_folder(tmp_path)
    if drop_ties:  # Pick-a-Pic drops every soft label then; the folder drops only 0.5
        text = (folder / "pairs.csv").read_text().splitlines()
        (folder / "pairs.csv").write_text("\n".join(x for x in text if ",0.75," not in x) + "\n")
    parquet = write_parquet(folder / "pairs.csv", tmp_path / "train.parquet")
    val_parquet = write_parquet(folder / "pairs.csv", tmp_path / "val.parquet", "validation")
    common = {**AUGMENT, "drop_ties": drop_ties, "batch_size": 3, "seed": 7}
    ours = PairFolderDataModule(str(folder), **common)
    theirs = PickAPicDataModule(train_files=str(parquet), val_files=str(val_parquet), **common)
    for dm in (ours, theirs):
        dm.prepare_data()
        dm.setup("fit")
    assert len(ours.train_set) == len(theirs.train_set) == (8 if drop_ties else 10)
    got = epochs_of_batches(ours.train_dataloader())
    assert_same_batches(got, epochs_of_batches(theirs.train_dataloader()))
    assert_same_batches(list(ours.val_dataloader()), list(theirs.val_dataloader()))
    assert any(c == "" for b in got for c in b.captions)  # the dropout did fire


def test_loader_resumes_exactly_mid_epoch():
    dm = PairFolderDataModule(str(FOLDER), **AUGMENT, batch_size=2, seed=3)
    loader = dm.train_dataloader()
    full = epochs_of_batches(loader)
    loader = dm.train_dataloader()
    first = iter(loader)
    next(first)
    state = loader.state_dict()
    resumed = PairFolderDataModule(str(FOLDER), **AUGMENT, batch_size=2, seed=3)
    again = resumed.train_dataloader()
    again.load_state_dict(state)
    assert_same_batches(epochs_of_batches(again), full[1:])


def test_labels_ties_and_swaps(tmp_path):
    """label 1.0 and blank keep the order, 0.0 swaps, 0.75 stays soft, 0.5 is a dropped tie."""
    folder = copy_folder(tmp_path)
    cells = ["1.0", "", "0.0", "0.5", "0.75"]
    lines = [
        f"p{i},images/pair{i:02d}_a.png,images/pair{i:02d}_b.png,{c},train"
        for i, c in enumerate(cells)
    ]
    write_csv(folder, lines)
    plain = {"resolution": 16, "hflip": False, "proportion_empty_prompts": 0.0}
    dropped = PairFolderDataModule(str(folder), **plain)
    dropped.setup("fit")
    assert [r.caption for r in dropped.train_set.records] == ["p0", "p1", "p2", "p4"]
    dm = PairFolderDataModule(str(folder), drop_ties=False, **plain)
    dm.setup("fit")
    samples = [dm.train_set[i] for i in range(len(dm.train_set))]
    assert [s.caption for s in samples] == ["p0", "p1", "p2", "p3", "p4"]
    probs = torch.tensor([s.pref_prob for s in samples])
    assert_close(probs, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.75]), rtol=0, atol=0)

    def pixels(path: Path) -> torch.Tensor:
        return ImageTransform(16)(decode_image(path.read_bytes()), np.random.default_rng(0))

    records = dm.train_set.records
    assert_close(samples[0].pixels_w, pixels(records[0].path_w), rtol=0, atol=0)
    assert_close(samples[2].pixels_w, pixels(records[2].path_l), rtol=0, atol=0)  # swapped
    assert_close(samples[2].pixels_l, pixels(records[2].path_w), rtol=0, atol=0)
    assert dm.val_set is None and dm.val_dataloader() == []


def test_committed_folder_reads_as_documented():
    records = read_pair_csv(FOLDER / "pairs.csv")
    assert [len(records["train"]), len(records["validation"])] == [10, 2]
    assert records["train"][4].caption == "a green circle, centred"  # a quoted comma
    assert [r.label for r in records["train"]][:3] == [1.0, 1.0, 0.0]  # blank label = 1.0
    dm = PairFolderDataModule(str(FOLDER), resolution=16, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.pixels_w.shape == batch.pixels_l.shape == (4, 3, 16, 16)
    assert batch.pixels_w.min() >= -1 and batch.pixels_w.max() <= 1
    assert dm.rows_missing_files == {"train": 0, "validation": 0}


@pytest.mark.parametrize(
    ("header", "column"),
    [("caption,image_w,label\n", "image_l"), ("image_w,image_l\n", "caption")],
)
def test_missing_column_is_one_line_naming_file_and_column(tmp_path, header, column):
    path = write_csv(tmp_path, ["a,b.png,1.0"], header=header)
    with pytest.raises(DataError) as err:
        PairFolderDataModule(str(tmp_path)).setup("fit")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"'{column}'" in message


def test_missing_csv_names_the_file_and_the_option(tmp_path):
    with pytest.raises(DataError, match=r"pairs\.csv'?: no such CSV file.*--data\.init_args\.root"):
        PairFolderDataModule(str(tmp_path / "nowhere")).setup("fit")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("a,images/pair00_a.png,images/pair00_b.png,1.5,train", "column 'label'"),
        ("a,images/pair00_a.png,images/pair00_b.png,yes,train", "column 'label'"),
        ("a,images/pair00_a.png,images/pair00_b.png,1.0,test", "column 'split'"),
        ("a,,images/pair00_b.png,1.0,train", "column 'image_w' is empty"),
    ],
)
def test_bad_cell_names_the_line_and_column(tmp_path, line, needle):
    folder = copy_folder(tmp_path)
    good = "b,images/pair01_a.png,images/pair01_b.png,1.0,train"
    path = write_csv(folder, [good, line])
    with pytest.raises(DataError) as err:
        PairFolderDataModule(str(folder)).setup("fit")
    assert f"'{path}' line 3" in str(err.value) and needle in str(err.value)


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    folder = copy_folder(tmp_path)
    (folder / "images" / "pair03_b.png").unlink()  # train row, line 5
    corrupt = folder / "images" / "pair06_a.png"
    corrupt.write_bytes(corrupt.read_bytes()[:20])
    (folder / "images" / "pair10_a.png").unlink()  # a validation row
    dm = PairFolderDataModule(str(folder), resolution=16, batch_size=1, drop_ties=False)
    with caplog.at_level(logging.WARNING, logger="lightning_pref.data"):
        dm.prepare_data()
        dm.setup("fit")
    assert dm.rows_missing_files == {"train": 1, "validation": 1}
    assert "1 of 10 train rows" in caplog.text and "pair03_b.png" in caplog.text
    batches = list(dm.train_dataloader())
    assert sum(b.num_skipped for b in batches) == 2  # the missing and the corrupt file
    assert sum(b.pixels_w.shape[0] for b in batches) == 8
    assert "image bytes are missing" in caplog.text and "undecodable image" in caplog.text
    assert sum(b.num_skipped for b in dm.val_dataloader()) == 1


def test_no_image_exists_is_an_error(tmp_path):
    write_csv(tmp_path, ["a,x.png,y.png,1.0,train", "b,z.png,w.png,,"])
    with pytest.raises(DataError, match="none of its image files exist"):
        PairFolderDataModule(str(tmp_path)).setup("fit")


def test_fewer_pairs_than_batch_size_is_an_error():
    dm = PairFolderDataModule(str(FOLDER), resolution=16, batch_size=32)
    with pytest.raises(DataError, match="9 training pairs per device, fewer than batch_size 32"):
        dm.train_dataloader()


def test_make_script_reproduces_the_committed_folder(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_pair_folder", ROOT / "tests" / "assets" / "make_pair_folder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "pair_folder")
    module.main()
    made = sorted(p.relative_to(tmp_path / "pair_folder") for p in module.OUT.rglob("*.*"))
    committed = sorted(p.relative_to(FOLDER) for p in FOLDER.rglob("*.*"))
    assert made == committed
    for rel in made:
        assert (module.OUT / rel).read_bytes() == (FOLDER / rel).read_bytes(), rel
    with (FOLDER / "pairs.csv").open() as f:
        assert next(csv.reader(f)) == ["caption", "image_w", "image_l", "label", "split"]


def test_fit_from_the_tiny_folder_config_trains(tmp_path, monkeypatch):
    """python -m lightning_pref fit --config tests/configs/tiny_dpo_folder.yaml, 3 steps."""
    from lightning_pref.models import TinyDiffusionPolicy

    monkeypatch.chdir(ROOT)
    main(
        [
            "fit",
            "--config",
            str(TINY_FOLDER),
            "--trainer.max_steps",
            "3",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    ckpt = next((tmp_path / "tiny_dpo_folder").iterdir()) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3
    initial = TinyDiffusionPolicy(sample_size=8, seed=0)
    initial.build()
    trained = {k.removeprefix("policy.unet."): v for k, v in checkpoint["state_dict"].items()}
    start = initial.unet.state_dict()
    assert start.keys() <= trained.keys()
    changed = [k for k, v in start.items() if not torch.equal(v, trained[k])]
    assert len(changed) > len(start) // 2, f"only {len(changed)} of {len(start)} tensors moved"


def test_fit_counts_rows_with_missing_images(tmp_path, monkeypatch):
    """Rows whose file is gone are skipped in training and end up in the module's rows_skipped."""
    folder = copy_folder(tmp_path)
    for i in (0, 1, 3):  # 3 of the 9 training pairs: at least one lands in epoch 0's 8 pairs
        (folder / "images" / f"pair{i:02d}_a.png").unlink()
    monkeypatch.chdir(ROOT)
    main(
        [
            "fit",
            "--config",
            str(TINY_FOLDER),
            "--trainer.max_steps",
            "2",
            "--data.init_args.root",
            str(folder),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ]
    )
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 2
    assert checkpoint["lightning_pref"]["rows_skipped"] >= 1


def test_dpo_folder_experiment_parses_with_a_root(capsys):
    config = str(ROOT / "experiments" / "dpo_folder.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--data.init_args.root", "my_pairs/", "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["class_path"] == "lightning_pref.data.PairFolderDataModule"
    assert cfg["data"]["init_args"]["root"] == "my_pairs/"
    assert cfg["data"]["init_args"]["resolution"] == 16
    assert (
        cfg["model"]["init_args"]["policy"]["class_path"]
        == "lightning_pref.minipick.MiniPickPolicy"
    )


def test_dpo_folder_experiment_trains_with_a_tiny_pixel_policy(tmp_path, monkeypatch):
    """The shipped config's data, objective and trainer settings, with MiniPickPolicy (built by
    pretraining, minutes) swapped for a tiny 16 px pixel-space policy built in code."""
    overlay = tmp_path / "tiny_policy.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    policy:\n"
        "      class_path: lightning_pref.models.TinyDiffusionPolicy\n"
        "      init_args: {sample_size: 16, with_vae: false, seed: 0}\n"
    )
    monkeypatch.chdir(ROOT)
    main(
        [
            "fit",
            "--config",
            str(ROOT / "experiments" / "dpo_folder.yaml"),
            "--config",
            str(overlay),
            "--data.init_args.root",
            str(FOLDER),
            "--data.init_args.batch_size",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ]
    )
    ckpt = next((tmp_path / "runs" / "dpo_folder").rglob("last.ckpt"))
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == 2


def test_sd15_config_takes_the_folder_data_from_the_command_line(capsys):
    """The README's SD1.5 command: the data class swapped, its shared settings (512 px) kept."""
    config = str(ROOT / "experiments" / "dpo_sd15.yaml")
    swap = ["--data", "lightning_pref.data.PairFolderDataModule", "--data.init_args.root", "p/"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *swap, "--print_config"])
    assert exit_info.value.code in (0, None)
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "lightning_pref.data.PairFolderDataModule"
    assert (data["init_args"]["root"], data["init_args"]["resolution"]) == ("p/", 512)


def test_dpo_folder_experiment_without_root_stops_with_one_line(capsys):
    config = str(ROOT / "experiments" / "dpo_folder.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config])
    assert exit_info.value.code == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "root" in errors[0]
