"""Diffusion policies, their components, loading and tiny test models."""

from lightning_pref.models.components import DiffusionComponents
from lightning_pref.models.loading import load_components
from lightning_pref.models.policy import DiffusionPolicy, TinyDiffusionPolicy
from lightning_pref.models.tiny import (
    build_tiny_components,
    save_tiny_clip,
    save_tiny_pipeline,
    tiny_tokenizer,
)

__all__ = [
    "DiffusionComponents",
    "DiffusionPolicy",
    "TinyDiffusionPolicy",
    "build_tiny_components",
    "load_components",
    "save_tiny_clip",
    "save_tiny_pipeline",
    "tiny_tokenizer",
]
