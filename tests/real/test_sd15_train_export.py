"""Two steps of ``experiments/dpo_sd15_lora.yaml`` on the real SD1.5 architecture, then export.

The real SD1.5 folder of ``sd_configs/`` with random weights at full size (859.5M-parameter UNet),
saved in fp32 and in fp16 (what most users download), trained at 64 px on CPU at precision 32 on
fake Pick-a-Pic shards, its LoRA started from one of the real SD1.5 LoRA files (``lora_init``);
``export --merge_lora`` writes a pipeline that diffusers'
``StableDiffusionPipeline.from_pretrained`` loads and runs, and the LoRA export loads into it
with ``load_lora_weights``. Wall time and peak memory go to ``$OUT`` or stdout (``-s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sd_folders import SD15

from lightning_pref.data.fake import write_fake_pickapic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run a command; its wall seconds, its own peak RSS in GiB and its output."""
    start = time.perf_counter()
    log = cwd / "command.log"
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "lightning_pref", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        _, status, usage = os.wait4(child.pid, 0)
    text = log.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    return time.perf_counter() - start, usage.ru_maxrss / 2**20, text


LORAS = {  # each run starts its adapters from one of the real LoRA files
    "float32": "sd15_lora_attnprocs_format_weapons_pytorch_lora_weights.safetensors",
    "float16": "sd15_lora_new_format_brain-mri_pytorch_lora_weights.safetensors",
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dpo_sd15_lora_two_steps_then_export(realfiles, tmp_path, dtype):
    lora = LORAS[dtype]
    folder = tmp_path / "sd15"
    make = (  # in its own process: a child's peak RSS counts its parent's at the fork
        "import sys, torch; from pathlib import Path; "
        "from sd_folders import random_weights_folder; "
        "random_weights_folder(Path(sys.argv[1]), Path(sys.argv[2]), "
        "getattr(torch, sys.argv[3]), small=False)"
    )
    source = realfiles / "sd_configs" / SD15
    subprocess.run([sys.executable, "-c", make, source, folder, dtype], cwd=HERE, check=True)
    write_fake_pickapic(tmp_path / "data", {"train": 8, "validation": 2}, image_size=64)
    fit_s, fit_rss, log = _run(
        [
            "fit",
            "--config",
            str(ROOT / "experiments" / "dpo_sd15_lora.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.precision=32",
            "--trainer.max_steps=2",
            "--trainer.accumulate_grad_batches=1",
            "--trainer.limit_val_batches=0",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--model.init_args.policy.init_args.pretrained={folder}",
            f"--data.init_args.dataset_name={tmp_path / 'data'}",
            "--data.init_args.resolution=64",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            "--model.init_args.policy.init_args.lora_rank=4",  # the real LoRA files' rank
            f"--model.init_args.policy.init_args.lora_init={realfiles / 'weights' / 'lora' / lora}",
        ],
        tmp_path,
    )
    run = tmp_path / "runs" / "dpo_sd15_lora" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2, log[-2000:]
    lora = [k for k in ckpt["state_dict"] if "lora" in k]
    assert len(lora) == 256 and len(lora) == len(ckpt["state_dict"])  # adapters only
    export_s, export_rss, _ = _run(
        [
            "export",
            "--ckpt_path",
            str(run),
            "--out",
            str(tmp_path / "merged"),
            "--merge_lora",
            "true",
        ],
        tmp_path,
    )
    _run(["export", "--ckpt_path", str(run), "--out", str(tmp_path / "lora")], tmp_path)

    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "merged"), safety_checker=None)
    image = pipe("a photo of a cat", height=64, width=64, num_inference_steps=2, output_type="np")
    pipe.load_lora_weights(str(tmp_path / "lora"))
    lora_image = pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="np")
    pipe_s = time.perf_counter() - start
    assert image.images[0].shape == lora_image.images[0].shape == (64, 64, 3)
    assert np.isfinite(image.images[0]).all()
    report = {
        "dtype on disk": dtype,
        "fit wall s (2 steps, incl. loading)": round(fit_s, 1),
        "export wall s": round(export_s, 1),
        "pipeline load + 2 samples s": round(pipe_s, 1),
        "fit peak RSS GiB": round(fit_rss, 2),
        "export peak RSS GiB": round(export_rss, 2),
    }
    print(json.dumps(report))
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / f"sd15_train_export_{dtype}.json", "w") as f:
            json.dump(report, f, indent=1)
