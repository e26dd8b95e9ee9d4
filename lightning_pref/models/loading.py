"""The only code that opens model folders or hub ids.

Whatever dtype the files hold (an fp16 folder or ``variant="fp16"`` weights), the UNet loads in
float32 (the trainable master weights; the Trainer's ``precision`` decides the compute dtype) and
the frozen VAE and text encoder(s) in ``frozen_dtype``. A VAE whose config file sets
``force_upcast`` (SDXL's, which overflows in fp16) stays float32 when ``frozen_dtype`` is float16,
as the diffusers pipelines upcast it. A VAE config without ``scaling_factor`` (SD1.5's) gets
diffusers' default 0.18215; extra config keys (configs re-saved by newer diffusers) are ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lightning_pref.errors import ModelLoadError, first_line
from lightning_pref.models.components import DiffusionComponents, FlowComponents
from lightning_pref.models.files import check_weights_folder

__all__ = [
    "check_source",
    "load_components",
    "load_flow_components",
    "load_flux_components",
    "load_vae",
    "looks_like_local_path",
    "vae_dtype",
]

_REQUIRED = ("unet", "scheduler", "text_encoder", "tokenizer")


def looks_like_local_path(name: str) -> bool:
    """True if ``name`` is meant as a filesystem path rather than a hub id like ``org/model``."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~"))
        or os.path.exists(name)
        or name.count("/") > 1
    )


def _hub_hint(name: str, arg: str = "pretrained") -> str:
    return (
        f"cannot load '{name}' from the Hugging Face Hub (no network access, or not cached). "
        f"Download it on a connected machine (`hf download {name} --local-dir DIR`), copy DIR "
        f"here and pass --model.init_args.policy.init_args.{arg} DIR"
    )


def check_source(name: str, revision: str | None, arg: str, what: str = "model") -> None:
    """Fail at once if ``name`` is a missing folder, or a hub id neither reachable nor cached.

    Args:
        name: a folder or hub id.
        revision: hub revision.
        arg: the policy argument that names it (for the fix in the message).
        what: what it is, for the message.

    Raises:
        ModelLoadError: one line naming the fix.
    """
    if looks_like_local_path(name):
        if not Path(name).expanduser().is_dir():
            raise ModelLoadError(f"{what} folder '{name}' does not exist")
        return
    from huggingface_hub import snapshot_download

    try:  # configs only: a few KB online, or the local cache offline
        snapshot_download(name, revision=revision, allow_patterns=["*.json", "*.txt"])
    except Exception as err:
        raise ModelLoadError(
            f"cannot reach '{name}' on the Hugging Face Hub and it is not cached. "
            f"Download it on a connected machine (`hf download {name} --local-dir DIR`), copy "
            f"DIR here and pass --model.init_args.policy.init_args.{arg} DIR"
        ) from err


def load_components(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    unet_path: str | None = None,
    vae_path: str | None = None,
    frozen_dtype: torch.dtype = torch.float32,
) -> DiffusionComponents:
    """Load UNet, noise scheduler, text encoder(s), tokenizer(s) and optional VAE.

    The dtypes: see the module docstring.

    An SDXL folder also gives ``text_encoder_2`` (with projection), ``tokenizer_2`` and
    ``model_index.json``'s ``force_zeros_for_empty_prompt`` (absent: True, the pipeline default).
    A scheduler config without ``clip_sample`` (SDXL's Euler: it never clips) gets False, not
    ``DDPMScheduler``'s pixel-space default of True.

    Args:
        pretrained: a diffusers SD/SDXL folder (``unet/``, ``scheduler/``, ``text_encoder/``,
            ``tokenizer/``; optionally ``vae/``, ``text_encoder_2/``, ``tokenizer_2/``) or hub id.
        revision: hub revision (ignored for local folders).
        variant: weight variant such as ``fp16``.
        unet_path: load the UNet from this folder instead (e.g. an SFT-initialised UNet).
        vae_path: load the VAE from here instead (see :func:`load_vae`), e.g. SDXL's fp16-fix
            VAE ``madebyollin/sdxl-vae-fp16-fix`` as the official SDXL recipes do.
        frozen_dtype: dtype of the frozen VAE and text encoder(s).

    Raises:
        ModelLoadError: one line naming what is missing and how to fix it.
    """
    local = looks_like_local_path(pretrained)
    root = Path(pretrained).expanduser()
    if local:
        _check_layout(pretrained, root)
        check_weights_folder(root)  # a Git LFS pointer or a broken file: one line, not a trace
    source = str(root) if local else pretrained
    kwargs: dict[str, Any] = {} if local else {"revision": revision}
    folder = root if local else None
    try:
        index = _model_index(source, folder, kwargs)
        parts = DiffusionComponents(
            unet=_load_unet(source, unet_path, variant, kwargs),
            noise_scheduler=_load_scheduler(source, kwargs),
            text_encoder=CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", variant=variant, dtype=frozen_dtype, **kwargs
            ),
            tokenizer=_load_tokenizer(source, folder, kwargs),
        )
        _load_optional_parts(parts, source, folder, index, variant, frozen_dtype, kwargs)
    except ModelLoadError:
        raise
    except Exception as err:  # hub/network/format errors come in many types
        raise _load_error(pretrained, local, err) from err
    if vae_path is not None:
        parts.vae = load_vae(vae_path, frozen_dtype)
    return parts


def _load_error(pretrained: str, local: bool, err: Exception) -> ModelLoadError:
    """One line for a failed load: the folder's first error line, or the hub fix."""
    if local:
        return ModelLoadError(f"failed to load '{pretrained}': {first_line(err)}")
    return ModelLoadError(_hub_hint(pretrained))


def _check_layout(pretrained: str, root: Path) -> None:
    if not root.is_dir():
        raise ModelLoadError(f"model folder '{pretrained}' does not exist")
    missing = [sub for sub in _REQUIRED if not (root / sub).is_dir()]
    if missing and (root / "transformer").is_dir():
        raise ModelLoadError(
            f"'{pretrained}' is a transformer folder: use class_path "
            "lightning_pref.models.FlowPolicy (SD3/SD3.5) or FluxPolicy (FLUX.1) for the policy"
        )
    if missing:
        raise ModelLoadError(
            f"'{pretrained}' is not a diffusers Stable Diffusion folder: missing "
            f"{', '.join(f'{m}/' for m in missing)}"
        )


def _load_unet(
    source: str, unet_path: str | None, variant: str | None, kwargs: dict[str, Any]
) -> UNet2DConditionModel:
    if unet_path:
        return UNet2DConditionModel.from_pretrained(unet_path, torch_dtype=torch.float32)
    return UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", variant=variant, torch_dtype=torch.float32, **kwargs
    )


def _load_optional_parts(
    parts: DiffusionComponents,
    source: str,
    root: Path | None,
    index: dict[str, Any],
    variant: str | None,
    frozen_dtype: torch.dtype,
    kwargs: dict[str, Any],
) -> None:
    """Add the VAE (if the folder has one) and SDXL's second text encoder and tokenizer."""
    if root is None or (root / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(
            source, subfolder="vae", variant=variant, torch_dtype=torch.float32, **kwargs
        )
        parts.vae = as_dtype(vae, vae_dtype(vae, frozen_dtype))
    if _has_component(index, root, "text_encoder_2"):
        parts.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", variant=variant, dtype=frozen_dtype, **kwargs
        )
        parts.tokenizer_2 = _load_tokenizer(source, root, kwargs, "tokenizer_2")
        # the SDXL pipeline's default when the flag is absent
        parts.force_zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))


def _model_index(source: str, root: Path | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` ({} for a local folder without one)."""
    if root is not None:
        path = root / "model_index.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source, "model_index.json", **kwargs)).read_text())


def _has_component(index: dict[str, Any], root: Path | None, name: str) -> bool:
    """Whether the pipeline has component ``name`` (a local subfolder, or in the hub index)."""
    if root is not None:
        return (root / name).is_dir()
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None


def _load_scheduler(source: str, kwargs: dict[str, Any]) -> DDPMScheduler:
    """The training noise schedule, read into ``DDPMScheduler`` whatever class was saved."""
    config = DDPMScheduler.load_config(source, subfolder="scheduler", **kwargs)
    scheduler = DDPMScheduler.from_config(config)
    if "clip_sample" not in config:  # e.g. SDXL's Euler config: that class never clips
        scheduler.register_to_config(clip_sample=False)
    return scheduler


def as_dtype(model: AutoencoderKL, dtype: torch.dtype) -> AutoencoderKL:
    """``model`` in ``dtype`` (untouched when it already is: diffusers warns on every ``.to``)."""
    return model if model.dtype == dtype else model.to(dtype)


def vae_dtype(vae: AutoencoderKL, frozen_dtype: torch.dtype) -> torch.dtype:
    """``frozen_dtype``, or float32 for a ``force_upcast`` VAE asked to run in float16.

    Only a config file that sets ``force_upcast: true`` counts (SDXL's, whose VAE overflows in
    fp16); SD1.x/2.x configs predate the key, diffusers defaults it to True, and their pipelines
    run those VAEs in fp16.
    """
    defaulted = vae.config.get("_use_default_values") or []
    upcast = bool(vae.config.get("force_upcast", False)) and "force_upcast" not in defaulted
    return torch.float32 if upcast and frozen_dtype == torch.float16 else frozen_dtype


def load_vae(vae_path: str, frozen_dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A VAE from another folder or hub id than the model's (e.g. SDXL's fp16-fix VAE).

    Args:
        vae_path: a folder holding the VAE (its ``config.json`` and weights, or a diffusers
            pipeline folder with ``vae/``), or a hub id with the VAE at its root, such as
            ``madebyollin/sdxl-vae-fp16-fix``.
        frozen_dtype: its dtype (see :func:`vae_dtype`).

    Raises:
        ModelLoadError: one line naming the fix.
    """
    local = looks_like_local_path(vae_path)
    root = Path(vae_path).expanduser()
    if local and not root.is_dir():
        raise ModelLoadError(f"VAE folder '{vae_path}' does not exist")
    if local:
        check_weights_folder(root)
    subfolder = "vae" if local and (root / "vae").is_dir() else None
    try:
        vae = AutoencoderKL.from_pretrained(
            str(root) if local else vae_path, subfolder=subfolder, torch_dtype=torch.float32
        )
    except Exception as err:
        if local:
            raise ModelLoadError(f"failed to load VAE '{vae_path}': {first_line(err)}") from err
        raise ModelLoadError(_hub_hint(vae_path, "vae_path")) from err
    return as_dtype(vae, vae_dtype(vae, frozen_dtype))


def _load_tokenizer(
    source: str, root: Path | None, kwargs: dict, subfolder: str = "tokenizer"
) -> Any:
    """CLIP BPE (``vocab.json`` + ``merges.txt``, as SD ships) or a ``tokenizer.json`` folder."""
    if root is not None and not (root / subfolder / "merges.txt").exists():
        return AutoTokenizer.from_pretrained(str(root / subfolder))
    return CLIPTokenizer.from_pretrained(source, subfolder=subfolder, **kwargs)


_FLOW_REQUIRED = ("transformer", "scheduler", "vae", "text_encoder", "text_encoder_2", "tokenizer")


def _check_flow_layout(pretrained: str, root: Path, kind: str = "SD3") -> None:
    if not root.is_dir():
        raise ModelLoadError(f"model folder '{pretrained}' does not exist")
    required = (*_FLOW_REQUIRED, "tokenizer_2") if kind == "FLUX" else _FLOW_REQUIRED
    missing = [f"{sub}/" for sub in required if not (root / sub).is_dir()]
    if missing:
        raise ModelLoadError(f"'{pretrained}' is not a {kind} folder: missing {', '.join(missing)}")
    check_weights_folder(root)


def _flow_text_parts(
    source: str, folder: Path | None, text: dict[str, Any], kwargs: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """CLIP-L, CLIP-G (with projection) and T5 (None without ``text_encoder_3/``), tokenizers."""
    from transformers import T5EncoderModel

    encoders: list[Any] = [
        CLIPTextModelWithProjection.from_pretrained(source, subfolder=sub, **text)
        for sub in ("text_encoder", "text_encoder_2")
    ]
    tokenizers = [_load_tokenizer(source, folder, kwargs, s) for s in ("tokenizer", "tokenizer_2")]
    if _has_component(_model_index(source, folder, kwargs), folder, "text_encoder_3"):
        encoders.append(T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", **text))
        tokenizers.append(AutoTokenizer.from_pretrained(source, subfolder="tokenizer_3", **kwargs))
    else:
        encoders.append(None)
        tokenizers.append(None)
    return encoders, tokenizers


def load_flow_components(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    frozen_dtype: torch.dtype = torch.float32,
) -> FlowComponents:
    """Load an SD3 / SD3.5 folder: transformer, flow-matching scheduler, VAE, text encoders.

    The transformer loads in float32, the rest in ``frozen_dtype`` (module docstring). T5
    (``text_encoder_3/``, ``tokenizer_3/``) is optional, as in diffusers' SD3 pipeline.

    Raises:
        ModelLoadError: one line naming what is missing and how to fix it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    local = looks_like_local_path(pretrained)
    root = Path(pretrained).expanduser()
    if local:
        _check_flow_layout(pretrained, root)
    source = str(root) if local else pretrained
    kwargs: dict[str, Any] = {} if local else {"revision": revision}
    weights = {"variant": variant, "torch_dtype": torch.float32, **kwargs}
    try:
        transformer = SD3Transformer2DModel.from_pretrained(
            source, subfolder="transformer", **weights
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
        text = {"variant": variant, "dtype": frozen_dtype, **kwargs}
        encoders, tokenizers = _flow_text_parts(source, root if local else None, text, kwargs)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            source, subfolder="scheduler", **kwargs
        )
    except Exception as err:  # hub/network/format errors come in many types
        raise _load_error(pretrained, local, err) from err
    vae = as_dtype(vae, vae_dtype(vae, frozen_dtype))
    return FlowComponents(transformer, scheduler, vae, encoders, tokenizers)


def load_flux_components(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    frozen_dtype: torch.dtype = torch.float32,
) -> FlowComponents:
    """Load a FLUX.1 folder: transformer, scheduler, VAE, CLIP-L (pooled) and T5, tokenizers.

    The text parts are ``[CLIP-L, T5, None]`` in :class:`FlowComponents`' slots. Dtypes as
    :func:`load_flow_components`.

    Raises:
        ModelLoadError: one line naming what is missing and how to fix it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5EncoderModel

    local = looks_like_local_path(pretrained)
    root = Path(pretrained).expanduser()
    if local:
        _check_flow_layout(pretrained, root, "FLUX")
    source = str(root) if local else pretrained
    kwargs: dict[str, Any] = {} if local else {"revision": revision}
    weights = {"variant": variant, "torch_dtype": torch.float32, **kwargs}
    text = {"variant": variant, "dtype": frozen_dtype, **kwargs}
    folder = root if local else None
    try:
        transformer = FluxTransformer2DModel.from_pretrained(
            source, subfolder="transformer", **weights
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
        encoders = [
            CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **text),
            T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", **text),
            None,
        ]
        tokenizers = [
            _load_tokenizer(source, folder, kwargs, s) for s in ("tokenizer", "tokenizer_2")
        ]
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            source, subfolder="scheduler", **kwargs
        )
    except Exception as err:  # hub/network/format errors come in many types
        raise _load_error(pretrained, local, err) from err
    vae = as_dtype(vae, vae_dtype(vae, frozen_dtype))
    return FlowComponents(transformer, scheduler, vae, encoders, [*tokenizers, None])
