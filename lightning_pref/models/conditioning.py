"""One tensor for a text conditioning with a pooled vector (SDXL, SD3, FLUX).

The modules repeat, chunk, concatenate and cache the text conditioning as one tensor ``[B, L, D]``;
models that also take a pooled text vector get it as one more row, zero-padded to D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pack_sdxl_conditioning", "unpack_sdxl_conditioning"]


def pack_sdxl_conditioning(hidden: Tensor, pooled: Tensor) -> Tensor:
    """Pack SDXL's two text conditionings into one tensor ``[B, L + 1, D]``.

    ``hidden`` ``[B, L, D]`` (both encoders' penultimate states, concatenated) keeps rows
    ``0..L-1``; row ``L`` holds ``pooled`` ``[B, P]`` (P <= D) zero-padded to D.
    """
    if pooled.shape[-1] > hidden.shape[-1]:
        raise ValueError(f"pooled width {pooled.shape[-1]} > text width {hidden.shape[-1]}")
    row = F.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1])).to(hidden.dtype)  # [B, D]
    return torch.cat([hidden, row.unsqueeze(1)], dim=1)


def unpack_sdxl_conditioning(packed: Tensor, pooled_dim: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack_sdxl_conditioning`: ``([B, L, D], [B, pooled_dim])``."""
    return packed[:, :-1], packed[:, -1, :pooled_dim]
