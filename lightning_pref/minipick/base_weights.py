"""MiniPick's committed base model: how it is rebuilt from scratch, and how the cache installs it.

A base model that draws what its prompts ask for takes longer to pretrain (1000 steps of 64, about
7 min on 2 cores) than the first ``fit`` should spend, so its weights are committed: ``weights/
base.safetensors`` (UNet and text encoder, fp16) with ``weights/base.json`` (the settings it was
trained with, its SHA-256, its quality on the held-out test prompts, how long it took). The
command that made them rebuilds them from scratch with our own pretraining
(:func:`~lightning_pref.minipick.build.pretrain_base`)::

    python -m lightning_pref minipick-base              # writes lightning_pref/minipick/weights/
    python -m lightning_pref minipick-base --out DIR    # somewhere else, to compare

The asset cache installs the committed file into its SD-layout ``base-*`` folder after checking
its hash against :data:`BASE_SHA256` (pinned here, so an edited or truncated file is refused with
the fix named); the cache's own manifest then guards the installed copy, as for every asset.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lightning_pref.errors import ConfigError, DataError
from lightning_pref.minipick.store import BASE_FIELDS, AssetSettings

__all__ = [
    "BASE_SHA256",
    "RECORD_FILE",
    "WEIGHTS_FILE",
    "build_base_weights",
    "install_committed_base",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "base.safetensors"
RECORD_FILE = WEIGHTS_DIR / "base.json"
# SHA-256 of weights/base.safetensors as made by `python -m lightning_pref minipick-base`.
BASE_SHA256 = "1d11d290e05464b71ffe9b729075c05737a8211ee047096c838af0d25503ff19"
REBUILD = "python -m lightning_pref minipick-base"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_settings(settings: AssetSettings) -> dict[str, object]:
    """The settings the base model depends on (JSON-ready: tuples become lists)."""
    values = asdict(settings)
    return {
        name: list(v) if isinstance(v, tuple) else v
        for name, v in values.items()
        if name in BASE_FIELDS and name != "base_source"
    }


def _save_sd_folder(policy, out_dir: Path) -> None:
    policy.unet.save_pretrained(out_dir / "unet")
    policy.noise_scheduler.save_pretrained(out_dir / "scheduler")
    policy.text_encoder.save_pretrained(out_dir / "text_encoder")
    policy.tokenizer.save_pretrained(out_dir / "tokenizer")


def _scratch(settings: AssetSettings):
    from lightning_pref.minipick.build import ScratchMiniPickPolicy

    policy = ScratchMiniPickPolicy(settings.image_size, settings.base_seed, settings.unet_channels)
    policy.build()
    return policy


def _load_fp16(policy, path: Path) -> None:
    """Load ``unet.*`` / ``text_encoder.*`` fp16 tensors into the fp32 modules (strict)."""
    tensors = load_file(str(path))
    for prefix, module in (("unet.", policy.unet), ("text_encoder.", policy.text_encoder)):
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)


def build_base_weights(out: Path, settings: AssetSettings | None = None) -> dict[str, object]:
    """Pretrain the base from scratch and write ``base.safetensors`` and ``base.json`` to ``out``.

    The quality recorded is that of the fp16 weights as the cache installs them.
    """
    from lightning_pref.minipick.build import base_quality, pretrain_base

    settings = replace(settings or AssetSettings(), base_source="train")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        trained = pretrain_base(Path(tmp), settings)
        from lightning_pref.models.policy import DiffusionPolicy

        policy = DiffusionPolicy(pretrained=tmp)
        policy.build()
    tensors = {f"unet.{k}": v.half().contiguous() for k, v in policy.unet.state_dict().items()}
    tensors |= {
        f"text_encoder.{k}": v.half().contiguous()
        for k, v in policy.text_encoder.state_dict().items()
    }
    weights = out / WEIGHTS_FILE.name
    save_file(tensors, str(weights))
    _load_fp16(policy, weights)  # measure what the cache will install
    policy.eval()
    record = {
        "settings": _base_settings(settings),
        "sha256": _sha256(weights),
        "bytes": weights.stat().st_size,
        "train_seconds": trained["seconds"],
        "test_quality": base_quality(policy),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "command": REBUILD,
    }
    (out / RECORD_FILE.name).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def install_committed_base(out_dir: Path, settings: AssetSettings) -> dict[str, object]:
    """Write the committed base into ``out_dir`` as an SD-layout folder (the cache's builder).

    Raises:
        ConfigError: if ``settings`` are not the ones the committed weights were trained with.
        DataError: if the committed file is missing or does not match :data:`BASE_SHA256`.
    """
    if not WEIGHTS_FILE.is_file() or not RECORD_FILE.is_file():
        raise DataError(
            f"MiniPick's committed base weights are missing ({WEIGHTS_FILE}): restore them with "
            f"`git checkout -- {WEIGHTS_DIR}` or rebuild them with `{REBUILD}`"
        )
    record = json.loads(RECORD_FILE.read_text())
    wanted = _base_settings(settings)
    if record["settings"] != wanted:
        changed = sorted(k for k in wanted if record["settings"].get(k) != wanted[k])
        raise ConfigError(
            f"the committed MiniPick base was trained with other settings ({', '.join(changed)} "
            f"differ): set AssetSettings(base_source='train') to pretrain with yours"
        )
    digest = _sha256(WEIGHTS_FILE)
    if digest != BASE_SHA256 or digest != record["sha256"]:
        raise DataError(
            f"{WEIGHTS_FILE} does not match its pinned SHA-256 (changed or corrupt): restore it "
            f"with `git checkout -- {WEIGHTS_FILE}`, or rebuild it with `{REBUILD}` and pin the "
            f"new hash in lightning_pref/minipick/base_weights.py"
        )
    policy = _scratch(settings)
    _load_fp16(policy, WEIGHTS_FILE)
    _save_sd_folder(policy, out_dir)
    return {"source": "committed", "sha256": digest, "test_quality": record["test_quality"]}
