import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one intra-op thread is as fast, and it does not thrash when the
# 2-core machine is shared with other jobs (2 threads then run 10-40x slower).
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")

from lightning_pref.models import TinyDiffusionPolicy  # noqa: E402
from lightning_pref.types import ImagePairBatch  # noqa: E402


@pytest.fixture(autouse=True)
def _no_global_seed(monkeypatch):
    """``seed: None`` follows ``PL_GLOBAL_SEED``; an earlier in-process CLI run must not leak it."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture(autouse=True)
def _fast_datasets():
    import datasets

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    yield


@pytest.fixture
def tiny_policy() -> TinyDiffusionPolicy:
    policy = TinyDiffusionPolicy(sample_size=8, seed=0)
    policy.build()
    return policy


@pytest.fixture
def tiny_lora_policy() -> TinyDiffusionPolicy:
    policy = TinyDiffusionPolicy(sample_size=8, seed=0, lora_rank=4)
    policy.build()
    return policy


@pytest.fixture
def image_pair_batch() -> ImagePairBatch:
    g = torch.Generator().manual_seed(0)
    return ImagePairBatch(
        pixels_w=torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
        pixels_l=torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
        captions=["a red circle", "a blue square", "", "a green triangle on the left"],
        pref_prob=torch.ones(4),
    )


# MiniPick's cached assets (base model and pairs), for the tests that run real MiniPick configs
# (the strategy tests, the README's commands): the assets every MiniPick run uses, in the same
# cache ($LIGHTNING_PREF_HOME/minipick or ~/.cache/lightning_pref/minipick). Found at once when
# present, else built once, in a subprocess that may use both cores (about 4.5 minutes on 2 cores).
BUILD = (
    "from lightning_pref.minipick import MiniPickAssets; a = MiniPickAssets(); "
    "a.base_dir(build=True); a.pairs_dir(build=True)"
)


@pytest.fixture(scope="session")
def minipick_assets() -> None:
    """Ensure MiniPick's base model and pairs are built."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([sys.executable, "-c", BUILD], env=env, check=True, timeout=1500)


# MiniPick-Flow's base and pairs (docs/flow.md): pretrained and sampled on first use, about 5
# minutes on 2 cores; for the README/docs commands that run MiniPick-Flow configs.
BUILD_FLOW = (
    "from lightning_pref.minipick import MiniPickAssets; a = MiniPickAssets(); "
    "a.flow_base_dir(build=True); a.flow_pairs_dir(build=True)"
)


@pytest.fixture(scope="session")
def minipick_flow_assets() -> None:
    """Ensure MiniPick-Flow's base model and pairs are built."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([sys.executable, "-c", BUILD_FLOW], env=env, check=True, timeout=1500)


ROOT = Path(__file__).resolve().parents[1]


def _fit_tiny(config: str, save_dir: Path, *extra: str, max_steps: int = 2) -> Path:
    """Train ``max_steps`` of ``tests/configs/<config>`` quietly, from the repository root.

    No validation, no progress bar, the run under ``save_dir``; ``extra`` are further ``fit``
    arguments. The scorers of the SPO configs live in ``tests/resume``. Returns the version folder.
    """
    from lightning_pref.__main__ import main

    args = ["fit", "--config", str(ROOT / "tests" / "configs" / config)]
    args += [f"--trainer.max_steps={max_steps}", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"]
    args += [f"--trainer.logger.init_args.save_dir={save_dir}", *extra]
    before = set(Path(save_dir).rglob("version_*"))
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        mp.chdir(ROOT)  # the configs name their data relative to the repository root
        mp.syspath_prepend(str(ROOT / "tests" / "resume"))
        main(args)
    after = set(Path(save_dir).rglob("version_*"))
    if after - before:
        (version,) = after - before
        return version
    return max(after, key=lambda p: (p / "checkpoints").stat().st_mtime)  # resumed into one


@pytest.fixture(scope="session")
def fit_tiny():
    """:func:`_fit_tiny`: a short run of a test config, shared by the tests that need one."""
    return _fit_tiny
