"""FSDP and DeepSpeed checkpoints: trainable weights only, read as they are by ``export`` and
``evaluate``, and a run that cannot resume one stops with one line.

Each strategy trains tests/configs/tiny_dpo.yaml for 2 steps on 2 CPU processes (gloo), once per
module (FSDP about 15 s). The DeepSpeed runs take about 20 s each (30 s more the first time
DeepSpeed compiles its CPU op), so their tests are marked slow. Weights are compared with what
torch's and DeepSpeed's own converters (which unpickle freely) read from the same folders.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from safetensors.torch import load_file

from lightning_pref.commands.export import main as export_main
from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.runs import find_run, load_module
from lightning_pref.training.checkpoints import STRATEGY_KEY, checkpoint_info, read_checkpoint
from lightning_pref.training.resume import check_resume, find_last_checkpoint
from lightning_pref.training.strategies import FSDP

ROOT = Path(__file__).parents[2]
STRATEGIES = ROOT / "experiments" / "strategies"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
CPU = torch.device("cpu")


def _fit(save_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "lightning_pref", "fit",
        "--config", str(ROOT / "tests" / "configs" / "tiny_dpo.yaml"),
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=420)


def _train(tmp_path_factory: pytest.TempPathFactory, overlay: str) -> Path:
    """The version folder of a 2-step run on 2 ranks under ``overlay``."""
    save_dir = tmp_path_factory.mktemp(overlay.removesuffix(".yaml"))
    proc = _fit(save_dir, "--config", str(STRATEGIES / overlay), "--trainer.devices=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return save_dir / "tiny_dpo" / "version_0"


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "fsdp.yaml")


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def deepspeed_run(request, tmp_path_factory) -> tuple[Path, int]:
    pytest.importorskip("deepspeed", reason="pip install -e '.[dev]' installs deepspeed")
    return _train(tmp_path_factory, f"deepspeed_zero{request.param}.yaml"), request.param


@pytest.fixture(scope="module")
def trainable(fsdp_run) -> set[str]:
    module = load_module(fsdp_run / "config.yaml")
    return {name for name, p in module.named_parameters() if p.requires_grad}


def _reference(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """The folder's weights as torch's or DeepSpeed's own converter reads them."""
    if (ckpt / ".metadata").is_file():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(ckpt, tmp / "reference.pt")
        return torch.load(tmp / "reference.pt", weights_only=True)["model"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt))


def _assert_export_and_evaluate_read(run_dir: Path, tmp: Path, trainable: set[str]) -> None:
    """``read_checkpoint``, the run loading of ``evaluate`` and ``export`` give the weights."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    reference = _reference(ckpt, tmp)
    assert set(reference) == trainable
    state = read_checkpoint(ckpt)["state_dict"]
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key

    run = find_run(run_dir)  # what `evaluate --run runs/NAME/version_N` loads
    assert run.ckpt == ckpt.resolve()
    tuned, base = load_module(run.config, run.ckpt), load_module(run.config)
    weights, start = dict(tuned.named_parameters()), dict(base.named_parameters())
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
    assert any(not torch.equal(start[k], v) for k, v in reference.items()), "nothing trained"

    export_main(["--ckpt_path", str(ckpt), "--out", str(tmp / "export")])
    unet = load_file(tmp / "export" / "unet" / "diffusion_pytorch_model.safetensors")
    unet_keys = {k for k in reference if k.startswith("policy.unet.")}
    assert {f"policy.unet.{k}" for k in unet} == unet_keys
    for key in unet_keys:
        assert torch.equal(unet[key.removeprefix("policy.unet.")], reference[key]), key


def test_fsdp_checkpoint_holds_trainable_weights_only(fsdp_run, trainable):
    """No frozen VAE, text encoder or reference in the shards; the folder says what wrote it."""
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = fsdp_run / "checkpoints" / "last.ckpt"
    keys = FileSystemReader(ckpt).read_metadata().state_dict_metadata
    assert {k.removeprefix("model.") for k in keys if k.startswith("model.")} == trainable
    assert not any("vae" in k or "text_encoder" in k or "reference_unet" in k for k in keys)
    record = read_checkpoint(ckpt)[STRATEGY_KEY]
    assert record == {"strategy": "FSDP", "world_size": 2, "state_dict_type": "sharded"}
    info = checkpoint_info(ckpt)
    assert (info.kind, info.world_size) == ("fsdp", 2)


def test_export_and_evaluate_read_an_fsdp_folder(fsdp_run, trainable, tmp_path):
    _assert_export_and_evaluate_read(fsdp_run, tmp_path, trainable)


def test_reading_an_fsdp_folder_runs_no_code(fsdp_run, tmp_path):
    """``.metadata`` is a pickle torch opens with pickle.load; ours admits its classes only."""
    planted = tmp_path / "planted"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    for name in (".metadata", "meta.pt"):
        bad = tmp_path / f"{name.strip('.')}" / "last.ckpt"
        shutil.copytree(fsdp_run / "checkpoints" / "last.ckpt", bad)
        (bad / name).write_bytes(pickle.dumps(Payload()))
        with pytest.raises(ModelLoadError, match="safely"):
            read_checkpoint(bad)
    assert not planted.exists()


def test_resume_from_an_fsdp_folder_without_fsdp_stops_with_one_line(fsdp_run, tmp_path):
    ckpt = fsdp_run / "checkpoints" / "last.ckpt"
    proc = _fit(tmp_path, f"--ckpt_path={ckpt}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot resume from '{ckpt}': it is an FSDP sharded checkpoint")
    assert "written on 2 ranks and this run is SingleDeviceStrategy on 1 rank" in last
    assert "run with the FSDP strategy on 2 ranks" in last and "export" in last
    assert proc.stderr.count("error:") == 1


def test_check_resume_takes_what_the_strategy_restores(fsdp_run, fit_tiny, tmp_path):
    """FSDP folder: FSDP on as many ranks only; a plain file: no sharding strategy only."""
    fsdp_ckpt = fsdp_run / "checkpoints" / "last.ckpt"
    check_resume(fsdp_ckpt, FSDP(), 2)
    for strategy, ranks, running in [
        (FSDP(), 4, "FSDP on 4 ranks"),
        (SingleDeviceStrategy(CPU), 1, "SingleDeviceStrategy on 1 rank"),
        (DDPStrategy(), 2, "DDPStrategy on 2 ranks"),
    ]:
        with pytest.raises(ConfigError, match=f"written on 2 ranks and this run is {running};"):
            check_resume(fsdp_ckpt, strategy, ranks)
    with pytest.raises(ConfigError, match="cannot load"):
        check_resume(fsdp_ckpt, DDPStrategy(), 2, subcommand="validate")

    plain = fit_tiny("tiny_dpo.yaml", tmp_path) / "checkpoints" / "last.ckpt"
    check_resume(plain, SingleDeviceStrategy(CPU), 1)
    check_resume(plain, DDPStrategy(), 2)
    with pytest.raises(ConfigError, match=r"single-file checkpoint \(single device or DDP\)"):
        check_resume(plain, FSDP(), 2)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="not a checkpoint"):
        check_resume(empty, FSDP(), 2)


def test_resume_last_skips_an_incomplete_folder(fsdp_run, tmp_path):
    """A save that died before writing the shards' index leaves a folder that is skipped."""
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    shutil.copytree(fsdp_run / "checkpoints" / "last.ckpt", folder / "step2.ckpt")
    (folder / "last.ckpt").mkdir()
    (folder / "last.ckpt" / "meta.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="incomplete"):
        checkpoint_info(folder / "last.ckpt")
    assert find_last_checkpoint(tmp_path / "run", None) == (folder / "step2.ckpt", "version_0")


@pytest.mark.slow
def test_deepspeed_checkpoint_holds_trainable_weights_only(deepspeed_run, trainable):
    run_dir, stage = deepspeed_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    for states in (ckpt / "checkpoint").glob("*model_states.pt"):
        saved = torch.load(states, weights_only=True)
        assert saved["frozen_param_fragments"] is None and not saved["frozen_param_shapes"]
        assert {name for group in saved["param_shapes"] for name in group} == trainable
    info = checkpoint_info(ckpt)
    assert (info.kind, info.world_size, info.zero_stage) == ("deepspeed", 2, stage)


@pytest.mark.slow
def test_export_and_evaluate_read_a_deepspeed_folder(deepspeed_run, trainable, tmp_path):
    _assert_export_and_evaluate_read(deepspeed_run[0], tmp_path, trainable)


@pytest.mark.slow
def test_resume_from_a_deepspeed_folder_elsewhere_stops_with_one_line(deepspeed_run, tmp_path):
    from lightning_pref.training.strategies import DeepSpeed

    run_dir, stage = deepspeed_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    check_resume(ckpt, DeepSpeed(stage=stage), 2)
    written = f"DeepSpeed ZeRO-{stage} checkpoint written on 2 ranks"
    other = 5 - stage  # ZeRO-2 <-> ZeRO-3
    for strategy, ranks, running in [
        (DeepSpeed(stage=stage), 4, f"DeepSpeed ZeRO-{stage} on 4 ranks"),
        (DeepSpeed(stage=other), 2, f"DeepSpeed ZeRO-{other} on 2 ranks"),
        (DDPStrategy(), 2, "DDPStrategy on 2 ranks"),
    ]:
        with pytest.raises(ConfigError, match=f"{written} and this run is {running};"):
            check_resume(ckpt, strategy, ranks)

    proc = _fit(tmp_path, "--config", str(STRATEGIES / "fsdp.yaml"), "--trainer.devices=2",
                f"--ckpt_path={ckpt}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"error: cannot resume from '{ckpt}': it is a {written} and this run is FSDP" in last
    assert proc.stderr.count("error:") == 1
