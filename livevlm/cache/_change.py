"""How far tokens moved: the change measure the token policy's dynamic and fixed-shape partial passes share."""

from __future__ import annotations

import torch


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Per row L2 norm as float32 (reduced in x's dtype, which accumulates in float32: no float copy of x)."""
    return torch.linalg.vector_norm(x, dim=-1).float()


def relative_change(delta: torch.Tensor, ref_norms: torch.Tensor) -> torch.Tensor:
    """Per row: |delta| / |ref| (L2, float32)."""
    return row_norms(delta) / ref_norms.clamp_min(1e-6)
