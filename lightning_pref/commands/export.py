"""Export a run to diffusers: ``python -m lightning_pref export --ckpt_path CKPT --out DIR``.

The run's model is rebuilt from its ``config.yaml`` and checkpoint with
:func:`lightning_pref.runs.load_module` (``--ema true``: the EMA weights), then written as

- a full fine-tune: a ``StableDiffusionPipeline`` folder (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``, ``model_index.json``, safetensors weights) that
  ``DiffusionPipeline.from_pretrained(DIR)`` loads. A pixel-space model (no VAE) has no diffusers
  pipeline: its parts are written in the same layout without ``model_index.json``, which
  ``lightning_pref``'s loader (``policy.init_args.pretrained DIR``) and
  ``UNet2DConditionModel.from_pretrained(DIR, subfolder="unet")`` read.
- a LoRA policy: ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(DIR)`` on the
  base model named in ``README.md``/``export.json``, plus ``scheduler/``. PEFT scales an adapter's
  output by ``lora_alpha / r``; diffusers re-creates adapters with ``lora_alpha = r`` when the file
  carries no alpha, so the scale is multiplied into ``lora_B`` and the file loads exactly anywhere.
  ``--merge_lora true`` instead folds the adapters into the UNet and writes a full pipeline.

The scheduler is always a ``DDIMScheduler`` over the training betas that does what
:mod:`lightning_pref.models.sampling` does: "leading" spacing, ``steps_offset=1``,
``set_alpha_to_one=False`` and no thresholding, so the pipeline's DDIM samples are the
framework's for the same initial latents. (With ``clip_sample`` diffusers keeps the unclipped ε̂
while our sampler re-derives it; SD models do not clip.)

An SDXL policy is written as a ``StableDiffusionXLPipeline`` (both text encoders and tokenizers)
with the policy's ``force_zeros_for_empty_prompt`` in its config, and its LoRA file is saved by
that class. The pipeline's default size conditioning, ``original_size = target_size = (height,
width)`` and crop ``(0, 0)``, is the policy's ``(H, W, 0, 0, H, W)``; its default negative prompt
(None) is the policy's unconditional ``""``: zeros with the flag, the encoded ``""`` without.

A flow policy is written as a ``StableDiffusion3Pipeline`` (SD3/SD3.5) or ``FluxPipeline``
(FLUX.1) with its own ``FlowMatchEulerDiscreteScheduler``, which steps as our Euler sampler; its
LoRA file holds the transformer's adapters in PEFT's key names (``transformer.X.lora_A.weight``),
as those pipelines' ``save_lora_weights`` write them, the scale folded into ``lora_B``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from lightning_pref.cli import parse_dataclass
from lightning_pref.errors import ConfigError
from lightning_pref.models.flux import FluxPolicy
from lightning_pref.models.lora import lora_state_dict
from lightning_pref.models.policy import TORCH_DTYPES, DiffusionPolicy
from lightning_pref.runs import RunPaths, find_run, load_module
from lightning_pref.training.checkpoints import checkpoint_info, is_checkpoint_folder

__all__ = [
    "ExportArgs",
    "ddim_scheduler",
    "main",
    "export_policy",
    "build_pipeline",
    "find_checkpoint",
    "pipeline_class",
]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class ExportArgs:
    """Write a trained run as a diffusers pipeline or LoRA (``python -m lightning_pref export``).

    Attributes:
        ckpt_path: a checkpoint inside a run's checkpoints/: a .ckpt file, or the folder FSDP or
            DeepSpeed writes (read as it is); or a run folder runs/NAME/version_N, which uses
            checkpoints/last.ckpt.
        out: output folder (created).
        config: the run's config.yaml; default the one next to the checkpoint's version folder.
        ema: export the EMA weights (saved by the ``EMA`` callback) instead of the trained ones.
        merge_lora: for a LoRA policy, fold the adapters into the UNet and write a full pipeline.
        dtype: weight dtype of the written files.
        overwrite: write into a non-empty ``out``.
    """

    ckpt_path: str
    out: str
    config: str | None = None
    ema: bool = False
    merge_lora: bool = False
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    overwrite: bool = False


def find_checkpoint(ckpt_path: str | Path, config: str | Path | None = None) -> RunPaths:
    """The checkpoint to export (a file, or an FSDP or DeepSpeed folder) and its ``config.yaml``.

    Raises:
        ConfigError: for a missing path, a run without checkpoint or a missing config.
        ModelLoadError: for an incomplete checkpoint folder.
    """
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise ConfigError(f"checkpoint '{path}' does not exist")
    checkpoint = path.is_file() or is_checkpoint_folder(path)
    if checkpoint and path.is_dir():
        checkpoint_info(path)  # an incomplete FSDP/DeepSpeed folder: one line naming it
    if config is not None:
        config = Path(config).expanduser()
        if not config.is_file():
            raise ConfigError(f"config '{config}' does not exist")
        if checkpoint:
            return RunPaths(config.resolve(), path.resolve())
    elif checkpoint and not (path.parent.parent / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml next to the checkpoint's version folder ('{path.parent.parent}'); "
            "pass the run's config with --config"
        )
    run = find_run(path)
    if run.ckpt is None:
        raise ConfigError(f"run '{run.config.parent}' has no checkpoint; pass a .ckpt")
    return RunPaths(Path(config or run.config).resolve(), run.ckpt)


def pipeline_class(policy: DiffusionPolicy) -> type[DiffusionPipeline]:
    """The diffusers pipeline a built policy's parts form: SD1.x/2.x, SDXL, SD3 or FLUX."""
    if isinstance(policy, FluxPolicy):
        return FluxPipeline
    if policy.is_flow:
        return StableDiffusion3Pipeline
    return StableDiffusionXLPipeline if policy.is_sdxl else StableDiffusionPipeline


def _flow_pipeline(policy: DiffusionPolicy) -> DiffusionPipeline:
    """SD3's or FLUX's pipeline on the policy's parts and its own flow-matching scheduler."""
    parts = {
        "transformer": policy.unet,
        "scheduler": policy.noise_scheduler,
        "vae": policy.vae,
        "text_encoder": policy.text_encoder,
        "tokenizer": policy.tokenizer,
        "text_encoder_2": policy.text_encoder_2,
        "tokenizer_2": policy.tokenizer_2,
    }
    if isinstance(policy, FluxPolicy):
        return FluxPipeline(**parts)
    return StableDiffusion3Pipeline(
        **parts, text_encoder_3=policy.text_encoder_3, tokenizer_3=policy.tokenizer_3
    )


def scheduler_for(policy: DiffusionPolicy) -> Any:
    """The scheduler written with an export: DDIM as our sampler (UNet), the flow scheduler."""
    return policy.noise_scheduler if policy.is_flow else ddim_scheduler(policy)


def build_pipeline(policy: DiffusionPolicy) -> DiffusionPipeline:
    """The policy's parts (sharing its modules) as a diffusers pipeline with :func:`ddim_scheduler`.

    Raises:
        ConfigError: for a pixel-space policy (no VAE), which no diffusers pipeline describes.
    """
    if policy.vae is None:
        raise ConfigError("a pixel-space policy (no VAE) has no diffusers pipeline")
    if policy.is_flow:
        return _flow_pipeline(policy)
    parts = {
        "vae": policy.vae,
        "text_encoder": policy.text_encoder,
        "tokenizer": policy.tokenizer,
        "unet": policy.unet,
        "scheduler": ddim_scheduler(policy),
    }
    if policy.is_sdxl:
        return StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=policy.text_encoder_2,
            tokenizer_2=policy.tokenizer_2,
            force_zeros_for_empty_prompt=policy.zero_empty_prompt,
            add_watermarker=False,  # not saved; it would only alter the images here
        )
    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def ddim_scheduler(policy: DiffusionPolicy) -> DDIMScheduler:
    """A ``DDIMScheduler`` on the policy's training betas that steps as our sampler does.

    Raises:
        ConfigError: if its ā differ from the policy's (a schedule DDIM cannot express).
    """
    scheduler = DDIMScheduler.from_config(
        policy.noise_scheduler.config,
        prediction_type=policy.prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
        set_alpha_to_one=False,  # our sampler's final ā is ā_0
        thresholding=False,
    )
    if not torch.allclose(scheduler.alphas_cumprod.float(), policy.alphas_cumprod.cpu()):
        raise ConfigError("the policy's noise schedule cannot be written as a DDIMScheduler")
    return scheduler


def _base_model(policy: DiffusionPolicy) -> dict[str, Any]:
    """Where the policy's weights came from (what a LoRA applies to)."""
    built_in_code = policy.pretrained.startswith("<")
    return {
        "pretrained": policy.pretrained,
        "revision": policy.revision,
        "variant": policy.variant,
        "unet_path": policy.unet_path,
        "vae_path": getattr(policy, "vae_path", None),
        "policy_class": f"{type(policy).__module__}.{type(policy).__qualname__}",
        "note": "built in code by policy_class, not a diffusers folder" if built_in_code else None,
    }


def _lora_readme(policy: DiffusionPolicy, base: dict[str, Any]) -> str:
    """README.md of a LoRA export: the base model and how to load the file onto it."""
    cls = pipeline_class(policy).__name__
    scheduler = type(scheduler_for(policy)).__name__
    # the base folder's own flag may differ from the policy's (force_zeros_for_empty_prompt arg)
    flag = f", force_zeros_for_empty_prompt={policy.zero_empty_prompt}" if policy.is_sdxl else ""
    return (
        "# LoRA exported by lightning_pref\n\n"
        f"Base model: `{base['pretrained']}`"
        + (f" (UNet from `{base['unet_path']}`)" if base["unet_path"] else "")
        + (f" (VAE from `{base['vae_path']}`)" if base["vae_path"] else "")
        + (f" ({base['note']})" if base["note"] else "")
        + f"\n\nRank {policy.lora_rank}, alpha {policy.lora_alpha} (scale folded into lora_B).\n\n"
        f"```python\nfrom diffusers import {scheduler}, {cls}\n\n"
        f'pipe = {cls}.from_pretrained("{base["pretrained"]}"{flag})\n'
        f'pipe.scheduler = {scheduler}.from_pretrained("THIS_DIR", subfolder="scheduler")\n'
        'pipe.load_lora_weights("THIS_DIR")\n```\n'
    )


def _save_lora(policy: DiffusionPolicy, out: Path, dtype: torch.dtype) -> dict[str, Any]:
    """``pytorch_lora_weights.safetensors`` + ``scheduler/`` + a README naming the base model."""
    lora = lora_state_dict(policy.unet, peft_keys=policy.is_flow)
    state = {k: v.detach().to(dtype).contiguous() for k, v in lora.items()}
    layers = {"transformer_lora_layers" if policy.is_flow else "unet_lora_layers": state}
    pipeline_class(policy).save_lora_weights(out, **layers, safe_serialization=True)
    scheduler_for(policy).save_pretrained(out / "scheduler")
    base = _base_model(policy)
    (out / "README.md").write_text(_lora_readme(policy, base))
    return {
        "kind": "lora",
        "weights": LORA_WEIGHTS,
        "pipeline": pipeline_class(policy).__name__,
        "base_model": base,
        "lora_rank": policy.lora_rank,
        "lora_alpha": policy.lora_alpha,
        "scale_folded_into_lora_B": True,
        "target_modules": policy.lora_target_modules,
    }


def _save_components(policy: DiffusionPolicy, out: Path, dtype: torch.dtype) -> dict[str, Any]:
    """A pixel-space policy's parts in the pipeline layout, without ``model_index.json``."""
    for name in ("unet", "text_encoder", "text_encoder_2"):
        if (model := getattr(policy, name, None)) is not None:
            model.to(dtype).save_pretrained(out / name, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if (tokenizer := getattr(policy, name, None)) is not None:
            tokenizer.save_pretrained(out / name)
    ddim_scheduler(policy).save_pretrained(out / "scheduler")
    print(
        "note: pixel-space model (no VAE): diffusers has no pipeline for it, so no "
        "model_index.json; load the folder with lightning_pref (policy pretrained DIR) or "
        "UNet2DConditionModel.from_pretrained(DIR, subfolder='unet')"
    )
    if policy.is_sdxl and not policy.zero_empty_prompt:  # the loader's default is True
        print(
            "note: this policy encodes '' (no force-zeros): load the folder with policy "
            "force_zeros_for_empty_prompt false (the loader's default without model_index.json "
            "is true)"
        )
    return {"kind": "components", "pipeline": None}


def _save_full(policy: DiffusionPolicy, out: Path, dtype: torch.dtype) -> dict[str, Any]:
    """A diffusers pipeline folder; without a VAE its parts in that layout (no model_index.json)."""
    if policy.vae is None:
        return _save_components(policy, out, dtype)
    pipe = build_pipeline(policy)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    return {"kind": "pipeline", "pipeline": type(pipe).__name__}


def export_policy(
    policy: DiffusionPolicy, out: str | Path, merge_lora: bool = False, dtype: str = "float32"
) -> dict[str, Any]:
    """Write a built policy to ``out`` (see the module docstring); returns ``export.json``'s info.

    Args:
        policy: a built policy (its weights are moved to ``dtype`` and, with ``merge_lora``, its
            adapters are folded in: pass a policy you no longer train).
        out: the output folder; created if missing.
        merge_lora: write a LoRA policy as a full pipeline with the adapters folded in.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy.cpu()
    if policy.is_lora and merge_lora:
        policy.unet.fuse_lora()  # W += scale·B·A, then drop the adapter layers
        policy.unet.unload_lora()
    if policy.is_lora and not merge_lora:
        info = _save_lora(policy, out, TORCH_DTYPES[dtype])
    else:
        info = _save_full(policy, out, TORCH_DTYPES[dtype])
        info["base_model"] = _base_model(policy)
    scheduler = type(scheduler_for(policy)).__name__
    info.update(dtype=dtype, scheduler=scheduler, prediction_type=policy.prediction_type)
    if policy.is_sdxl:
        info["force_zeros_for_empty_prompt"] = policy.zero_empty_prompt
    return info


def main(argv: list[str]) -> dict[str, Any]:
    """``python -m lightning_pref export``: rebuild the run's model and write it to ``--out``."""
    args = parse_dataclass(ExportArgs, argv, "python -m lightning_pref export")
    run = find_checkpoint(args.ckpt_path, args.config)
    out = Path(args.out).expanduser()
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not args.overwrite):
        raise ConfigError(f"output '{out}' exists and is not an empty folder (--overwrite true)")
    print(f"loading {run.ckpt}{' (EMA weights)' if args.ema else ''} with {run.config}")
    module = load_module(run.config, run.ckpt, args.ema)
    module.reference_unet = None  # the frozen reference is never exported
    policy = module.policy
    what = "LoRA weights" if policy.is_lora and not args.merge_lora else "full model"
    print(f"writing the {what} ({args.dtype}) to {out}")
    info = export_policy(policy, out, args.merge_lora, args.dtype)
    info.update(checkpoint=str(run.ckpt), config=str(run.config), ema=args.ema)
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"done: {out} ({info['kind']})", file=sys.stdout)
    return info
