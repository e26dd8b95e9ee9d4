"""Read a checkpoint whatever wrote it: one Lightning file, an FSDP folder or a DeepSpeed folder.

- a **file** (single device, DDP, FSDP with ``state_dict_type: full``): Lightning's checkpoint;
- an **FSDP folder** (``state_dict_type: sharded``): ``torch.distributed.checkpoint`` shards
  (``.metadata``, ``__<rank>_<n>.distcp``) and Lightning's ``meta.pt`` (everything but weights);
- a **DeepSpeed folder**: ``latest`` names a tag folder holding ``*_model_states.pt`` (Lightning's
  checkpoint without weights) and one ``*_optim_states.pt`` per rank, whose fp32 partitions are
  the trainable weights (ZeRO-1/2: each rank a slice of each parameter group; ZeRO-3: each rank a
  slice of each parameter).

:func:`read_checkpoint` returns each as a Lightning checkpoint dict whose ``state_dict`` is the
module's trainable weights, flat ``{name: tensor}`` on the CPU, in one process without a process
group. Nothing is unpickled beyond tensors and plain data: files are opened with
``torch.load(weights_only=True)`` (DeepSpeed's loss scaler and ZeRO-stage objects are read as
inert stand-ins; DeepSpeed itself is not imported), and FSDP's ``.metadata`` (a pickle that torch
opens with plain ``pickle.load``) through an unpickler that admits only its metadata classes.

:func:`checkpoint_info` says which kind a path is and how many ranks wrote it, which is what
:func:`lightning_pref.training.resume.check_resume` compares with the run that resumes it.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_pref.errors import ConfigError, ModelLoadError, first_line
from lightning_pref.models.files import check_checkpoint_file

__all__ = [
    "STRATEGY_KEY",
    "CheckpointInfo",
    "checkpoint_info",
    "is_checkpoint_folder",
    "read_checkpoint",
]

STRATEGY_KEY = "lightning_pref_strategy"
"""Checkpoint key where :class:`~lightning_pref.training.strategies.FSDP` records what wrote it."""

_FSDP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
_FSDP_META = "meta.pt"  # Lightning's non-weight state next to the shards
_DS_LATEST = "latest"  # DeepSpeed: the tag folder of the newest save
# DeepSpeed's own entries in a model-states file; the rest is Lightning's checkpoint
_DS_KEYS = (
    "module", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
    "buffer_names", "shared_params", "lr_scheduler", "data_sampler", "random_ltd", "ds_config",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size",
    "checkpoint_parallel_dimensions", "ds_version",
)  # fmt: skip


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint path holds and what wrote it.

    Attributes:
        path: the file or folder.
        kind: ``file``, ``fsdp`` (a sharded folder) or ``deepspeed`` (a ZeRO folder).
        world_size: the number of ranks that wrote a folder; None for a file (any number reads
            it).
        zero_stage: DeepSpeed's ZeRO stage.
        fsdp_file: a file written by FSDP (``state_dict_type: full``), whose optimizer state is
            in FSDP's layout.
    """

    path: Path
    kind: Literal["file", "fsdp", "deepspeed"]
    world_size: int | None = None
    zero_stage: int | None = None
    fsdp_file: bool = False

    @property
    def writer(self) -> str:
        """What wrote it, in words."""
        ranks = f"on {self.world_size} rank{'s' if self.world_size != 1 else ''}"
        if self.kind == "fsdp":
            return f"an FSDP sharded checkpoint written {ranks}"
        if self.kind == "deepspeed":
            return f"a DeepSpeed ZeRO-{self.zero_stage} checkpoint written {ranks}"
        if self.fsdp_file:
            return "a single-file FSDP checkpoint (state_dict_type full)"
        return "a single-file checkpoint (single device or DDP)"


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that FSDP or DeepSpeed wrote as a checkpoint (or meant to)."""
    path = Path(path)
    if not path.is_dir():
        return False
    markers = (_FSDP_METADATA, _FSDP_META, _DS_LATEST)
    return path.suffix == ".ckpt" or any((path / m).is_file() for m in markers)


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Which kind of checkpoint ``path`` is, and how many ranks wrote it.

    Raises:
        ConfigError: if ``path`` does not exist or is a folder that is no checkpoint.
        ModelLoadError: for a truncated file or an incomplete folder.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"checkpoint '{path}' does not exist")
    if path.is_file():
        check_checkpoint_file(path)
        checkpoint = _safe_load(path, mmap=True)
        record = checkpoint.get(STRATEGY_KEY) if isinstance(checkpoint, dict) else None
        fsdp = isinstance(record, dict) and record.get("strategy") == "FSDP"
        return CheckpointInfo(path, "file", fsdp_file=fsdp)
    if (path / _FSDP_METADATA).is_file():
        storage = _fsdp_metadata(path).storage_data.values()
        ranks = {info.relative_path.removeprefix("__").split("_")[0] for info in storage}
        return CheckpointInfo(path, "fsdp", world_size=len(ranks))
    if (path / _DS_LATEST).is_file():
        states = _safe_load(_deepspeed_model_states(path)[0], mmap=True)
        stage = states.get("ds_config", {}).get("zero_optimization", {}).get("stage")
        world = states.get("dp_world_size")
        return CheckpointInfo(path, "deepspeed", world_size=world, zero_stage=stage)
    if is_checkpoint_folder(path):
        raise ModelLoadError(
            f"checkpoint folder '{path}' is incomplete: no FSDP '{_FSDP_METADATA}' or DeepSpeed "
            f"'{_DS_LATEST}' in it (was the save interrupted?); pass another checkpoint"
        )
    raise ConfigError(f"'{path}' is a folder but not a checkpoint (FSDP, DeepSpeed or a file)")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as one Lightning checkpoint dict, safely, on the CPU.

    ``state_dict`` holds the module's trainable weights (flat ``{name: tensor}``); the other
    entries are Lightning's (``epoch``, ``hyper_parameters``, ``callbacks``, ...). A DeepSpeed
    folder's weights are its fp32 master weights.

    Raises:
        ConfigError: for a missing path or a folder that is no checkpoint.
        ModelLoadError: if it cannot be read safely (torn, unsafe or incomplete).
    """
    info = checkpoint_info(path)
    if info.kind == "fsdp":
        checkpoint = _read_fsdp(info.path)
    elif info.kind == "deepspeed":
        checkpoint = _read_deepspeed(info.path)
    else:
        checkpoint = _safe_load(info.path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelLoadError(f"'{info.path}' is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _safe_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with DeepSpeed's objects as inert stand-ins."""
    try:
        with torch.serialization.safe_globals(_DEEPSPEED_GLOBALS):
            return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as err:  # UnpicklingError for unsafe objects, RuntimeError for a torn file
        raise ModelLoadError(f"cannot load checkpoint '{path}' safely: {first_line(err)}") from err


class _DeepSpeedObject:
    """Stands in for a DeepSpeed object in its checkpoint files: kept as data, never run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_DEEPSPEED_GLOBALS: list[Any] = [
    (_DeepSpeedObject, f"deepspeed.{name}")
    for name in (
        "runtime.fp16.loss_scaler.LossScaler",
        "runtime.fp16.loss_scaler.DynamicLossScaler",
        "runtime.zero.config.ZeroStageEnum",
        "utils.tensor_fragment.fragment_address",
    )
]


# ------------------------------------------------------------------------------------ FSDP
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "torch._utils": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles ``torch.distributed.checkpoint`` metadata and refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not checkpoint metadata")


def _fsdp_metadata(path: Path) -> Any:
    """The folder's ``.metadata``, read with :class:`_MetadataUnpickler`."""
    try:
        with (path / _FSDP_METADATA).open("rb") as handle:
            return _MetadataUnpickler(handle).load()
    except Exception as err:
        raise ModelLoadError(
            f"cannot read '{path / _FSDP_METADATA}' safely: {first_line(err)}"
        ) from err


def _read_fsdp(path: Path) -> dict[str, Any]:
    """The ``model.*`` tensors of an FSDP folder, gathered whole, and its ``meta.pt``.

    A folder saved before :class:`~lightning_pref.training.strategies.FSDP` kept the trainable
    weights only (no record of it in ``meta.pt``) also holds the frozen models: only the
    weights that have optimizer state are read from it.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata

    metadata = _fsdp_metadata(path)

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata.storage_meta = metadata.storage_meta or StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    checkpoint = _safe_load(path / _FSDP_META) if (path / _FSDP_META).is_file() else {}
    keys = metadata.state_dict_metadata
    weights = {
        key.removeprefix("model."): torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in keys.items()
        if key.startswith("model.") and isinstance(md, TensorStorageMetadata)
    }
    if STRATEGY_KEY not in checkpoint:  # written before FSDP saved trainable weights only
        optimized = {k.split(".", 2)[2].rsplit(".", 1)[0] for k in keys if ".state." in k}
        weights = {k: v for k, v in weights.items() if k in optimized} if optimized else weights
    try:  # the tensors themselves are read with torch.load(weights_only=True)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.filterwarnings("ignore", message=".*load in a single process.*")
            load({"model": weights}, storage_reader=SafeReader(path), no_dist=True)
    except Exception as err:
        raise ModelLoadError(f"cannot read FSDP checkpoint '{path}': {first_line(err)}") from err
    return {**checkpoint, "state_dict": weights}


# ------------------------------------------------------------------------------- DeepSpeed
def _rank_of(path: Path) -> int:
    match = re.search(r"zero_pp_rank_(\d+)_", path.name)
    return int(match.group(1)) if match else 0


def _deepspeed_model_states(path: Path) -> list[Path]:
    """The tag folder's ``*_model_states.pt`` files, rank 0's first."""
    tag = (path / _DS_LATEST).read_text().strip()
    files = sorted((path / tag).glob("*model_states.pt"), key=_rank_of)
    if not files:
        raise ModelLoadError(f"DeepSpeed checkpoint '{path}' has no model states under '{tag}/'")
    return files


def _read_deepspeed(path: Path) -> dict[str, Any]:
    """Lightning's checkpoint from the model states, the weights from every rank's partitions."""
    model_states = _deepspeed_model_states(path)
    states = _safe_load(model_states[0])
    stage = states["ds_config"]["zero_optimization"]["stage"]
    world = int(states["dp_world_size"])
    optim_files = sorted(model_states[0].parent.glob("*_optim_states.pt"), key=_rank_of)
    if len(optim_files) != world:
        raise ModelLoadError(
            f"DeepSpeed checkpoint '{path}' was written on {world} ranks but holds "
            f"{len(optim_files)} optimizer files (an interrupted or overwritten save?)"
        )
    parts = [_safe_load(f, mmap=True)["optimizer_state_dict"] for f in optim_files]
    shapes = states["param_shapes"]  # one {name: shape} per parameter group, in flat order
    try:
        weights = _merge_zero3(shapes, parts) if stage == 3 else _merge_zero12(shapes, parts)
    except (KeyError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"cannot gather DeepSpeed checkpoint '{path}': {err}") from err
    checkpoint = {k: v for k, v in states.items() if k not in _DS_KEYS}
    return {**checkpoint, "state_dict": weights}


def _merge_zero12(shapes: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """ZeRO-1/2: each group's flat fp32 vector is the ranks' slices end to end."""
    paddings = parts[0].get("param_alignment_paddings")
    weights = {}
    for group, group_shapes in enumerate(shapes):
        flat = torch.cat([part["single_partition_of_fp32_groups"][group] for part in parts])
        pads = paddings[group] if paddings else [0] * len(group_shapes)
        offset = 0
        for (name, shape), pad in zip(group_shapes.items(), pads, strict=True):
            numel = math.prod(shape)
            if offset + numel > flat.numel():
                raise ValueError(f"group {group} ends before '{name}'")
            weights[name] = flat[offset : offset + numel].view(shape).clone()
            offset += numel + pad
    return weights


def _merge_zero3(shapes: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """ZeRO-3: each parameter is split in equal padded slices, one per rank, in flat order."""
    flats = [torch.cat(list(part["fp32_flat_groups"])) for part in parts]
    weights, offset = {}, 0
    for name, shape in ((n, s) for group in shapes for n, s in group.items()):
        numel = math.prod(shape)
        size = math.ceil(numel / len(flats))
        if offset + size > flats[0].numel():
            raise ValueError(f"the partitions end before '{name}'")
        whole = torch.cat([flat[offset : offset + size] for flat in flats])
        weights[name] = whole[:numel].view(shape).clone()
        offset += size
    if offset != flats[0].numel():
        raise ValueError(f"{flats[0].numel() - offset} values per rank left over")
    return weights
