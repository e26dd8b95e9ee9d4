"""Diffusion policies, their components, loading and tiny test models."""

from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.conditioning import pack_sdxl_conditioning, unpack_sdxl_conditioning
from lightning_pref.models.fast import FastPath
from lightning_pref.models.flow import FlowPolicy
from lightning_pref.models.flux import FluxPolicy
from lightning_pref.models.loading import load_components, load_vae
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.models.tiny import (
    TinyDiffusionPolicy,
    build_tiny_components,
    build_tiny_sdxl_components,
    save_tiny_clip,
    save_tiny_pipeline,
    save_tiny_sdxl_pipeline,
    save_tiny_vae,
    save_tiny_vpred_pipeline,
    tiny_tokenizer,
)
from lightning_pref.models.tiny_flow import (
    TinyFlowPolicy,
    TinyFluxPolicy,
    build_tiny_flux_components,
    build_tiny_sd3_components,
    save_tiny_flux_pipeline,
    save_tiny_sd3_pipeline,
)

__all__ = [
    "DiffusionComponents",
    "DiffusionPolicy",
    "FastPath",
    "FlowPolicy",
    "FluxPolicy",
    "TinyDiffusionPolicy",
    "TinyFlowPolicy",
    "TinyFluxPolicy",
    "build_tiny_flux_components",
    "save_tiny_flux_pipeline",
    "build_tiny_sd3_components",
    "save_tiny_sd3_pipeline",
    "build_tiny_components",
    "build_tiny_sdxl_components",
    "load_components",
    "load_vae",
    "pack_sdxl_conditioning",
    "save_tiny_clip",
    "save_tiny_pipeline",
    "save_tiny_sdxl_pipeline",
    "save_tiny_vae",
    "save_tiny_vpred_pipeline",
    "tiny_tokenizer",
    "unpack_sdxl_conditioning",
]
