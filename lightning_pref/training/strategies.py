"""FSDP and DeepSpeed strategies that also run on CPU (gloo), so CI can test the GPU recipes.

On GPUs these are Lightning's :class:`~lightning.pytorch.strategies.FSDPStrategy` and
:class:`~lightning.pytorch.strategies.DeepSpeedStrategy` unchanged (every override below
defers to the parent unless the accelerator is the CPU). Lightning refuses both on CPU; the
overrides are the smallest set that makes them run there, each one naming the check it skips:

- ``FSDP``: Lightning passes ``device_id=root_device.index`` (None on CPU), and torch's FSDP then
  looks for an accelerator; on CPU we pass ``device_id=cpu``. Lightning's ``fsdp`` CPU check is a
  ``type(...) is FSDPStrategy`` test, which a subclass already passes. Use
  ``state_dict_type: sharded`` on CPU: the full state dict offloads to CPU and crashes gloo
  with 2 ranks (torch 2.13).
- ``DeepSpeed``: ``setup_environment`` insists on a CUDA accelerator, ``setup_distributed``
  rejects device indices of None, and the DeepSpeed engine compares ``root_device.index >= 0``;
  on CPU we skip the first two checks and give the CPU device an index (the local rank).

``wrap_blocks`` is FSDP's auto-wrap policy given as import paths, so YAML can name the UNet's
blocks; the default wraps every diffusers UNet down/mid/up block (SD1.5, SDXL and MiniPick use
these classes), so each block's parameters are gathered only while that block runs.

Checkpoints hold the trainable weights only, as :meth:`PreferenceModule.state_dict
<lightning_pref.modules.PreferenceModule.state_dict>` does (the frozen VAE, text encoders and
reference are rebuilt from the config): the FSDP-wrapped model's ``state_dict`` drops every other
key (which FSDP's own hooks would otherwise gather, as the module's override is bypassed), for
saving and for loading; DeepSpeed is told ``exclude_frozen_parameters``. Both folders record the
number of ranks that wrote them; :mod:`lightning_pref.training.checkpoints` reads them.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch import nn

from lightning_pref.errors import ConfigError
from lightning_pref.training.checkpoints import STRATEGY_KEY

__all__ = ["DeepSpeed", "FSDP", "UNET_BLOCKS"]

_BLOCKS = "diffusers.models.unets.unet_2d_blocks."
UNET_BLOCKS = [
    _BLOCKS + name
    for name in (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "UNetMidBlock2D",
        "UNetMidBlock2DCrossAttn",
        "UpBlock2D",
        "CrossAttnUpBlock2D",
    )
]
"""The default FSDP wrap units: diffusers' UNet blocks."""


def _clean_name(name: str) -> str:
    """A parameter name without the wrapper prefixes FSDP's state dict keys never carry."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def _keep_keys(
    keep: frozenset[str], module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """``state_dict`` post-hook of the FSDP root: drop every key but ``keep`` (in place)."""
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] not in keep]:
        del state_dict[key]


def _import_class(path: str) -> type[nn.Module]:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"wrap_blocks: cannot import '{path}' ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"wrap_blocks: '{path}' is not an nn.Module class")
    return cls


class FSDP(FSDPStrategy):
    """Lightning's FSDP with the UNet blocks as wrap units; also runs on CPU with gloo.

    Args:
        wrap_blocks: import paths of the module classes that become FSDP units.
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3-like), ``SHARD_GRAD_OP`` (ZeRO-2-like),
            ``HYBRID_SHARD`` or ``NO_SHARD``.
        state_dict_type: ``sharded`` (one folder of shards, written in parallel; needed on CPU)
            or ``full`` (one file, gathered on rank 0).
        use_orig_params: keep the original parameters visible. Needed here: an FSDP unit holds
            frozen and trainable parameters together (the root unit holds the frozen VAE and
            text encoder next to the UNet's stem; LoRA mixes them in every block).
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPU; None picks by device.
        kwargs: other :class:`~lightning.pytorch.strategies.FSDPStrategy` arguments.
    """

    def __init__(
        self,
        wrap_blocks: list[str] | None = None,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "sharded",
        use_orig_params: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        blocks = {
            _import_class(path) for path in (UNET_BLOCKS if wrap_blocks is None else wrap_blocks)
        }
        super().__init__(
            auto_wrap_policy=blocks or None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            process_group_backend=process_group_backend,
            use_orig_params=use_orig_params,
            **kwargs,
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap ``model``; its state dict then keeps the trainable parameters only."""
        params = model.named_parameters()
        trainable = frozenset(_clean_name(n) for n, p in params if p.requires_grad)
        on_cpu = self.root_device.type == "cpu"
        wrapped = self._wrap(model) if on_cpu else super()._setup_model(model)
        # runs after FSDP's own post-hooks (registered when wrapping), on clean key names; the
        # load path builds its target from the same state_dict(), so old checkpoints that also
        # hold frozen weights still load (their extra keys are never read)
        wrapped.register_state_dict_post_hook(partial(_keep_keys, trainable))
        return wrapped

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Record what writes it (so a file is told from a DDP one), then save as Lightning does."""
        record = {"strategy": "FSDP", "world_size": self.world_size}
        checkpoint[STRATEGY_KEY] = {**record, "state_dict_type": self._state_dict_type}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        # Lightning's CPU-free version: device_id=None makes torch look for an accelerator
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


class DeepSpeed(DeepSpeedStrategy):
    """Lightning's DeepSpeed (ZeRO stages 1-3); also runs on CPU with gloo.

    Args:
        zero_init: under ZeRO-3, build the models inside ``deepspeed.zero.Init`` (each rank
            holds only its shard from the start). Off by default: diffusers' ``from_pretrained``
            inside ``zero.Init`` fails (``Cannot copy out of meta tensor``), so the models are
            loaded whole on each rank's CPU and the engine partitions them at setup; the GPU
            only ever holds shards either way. Turn it on for models built in code.
        exclude_frozen_parameters: checkpoints hold the trainable weights only (Lightning's
            default, False, also writes the frozen VAE, text encoders and reference, which are
            rebuilt from the config anyway, as ``frozen_param_fragments``).
        kwargs: :class:`~lightning.pytorch.strategies.DeepSpeedStrategy`'s arguments (``stage``,
            ``offload_optimizer``, ``offload_parameters``, ``process_group_backend``, ...).

    The first CPU run JIT-compiles DeepSpeed's shared-memory op (about 30 s, cached in
    ``~/.cache/torch_extensions``).
    """

    def __init__(
        self, zero_init: bool = False, exclude_frozen_parameters: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        self.zero_init = zero_init

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        """``deepspeed.zero.Init`` around ``configure_model`` only with ``zero_init``."""
        if self.zero_init:
            with super().model_sharded_context():
                yield
            return
        self._init_config_if_needed()
        yield

    def setup_environment(self) -> None:
        """Skip the CUDA-only accelerator check on CPU."""
        if self.root_device.type != "cpu":
            super().setup_environment()
            return
        DDPStrategy.setup_environment(self)

    @property
    def root_device(self) -> torch.device:
        """On CPU, a device with an index: the DeepSpeed engine compares it with 0."""
        device = super().root_device
        return torch.device("cpu", self.local_rank) if device.type == "cpu" else device

    def setup_distributed(self) -> None:
        """Skip the device-index check on CPU (CPU devices have no index)."""
        if super().root_device.type != "cpu":
            super().setup_distributed()
            return
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()
