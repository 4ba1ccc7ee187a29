"""Average pooling of KV tokens (the bilevel view reads chunks that are not selected this way)."""

from __future__ import annotations

import torch


def pool_tokens(kv: torch.Tensor, factor: int) -> torch.Tensor:
    """Average groups of `factor` consecutive tokens along dim -2 (a short tail group is averaged too).
    Averaged rotated keys give each group's exact mean logit for any query, so positions stay consistent."""
    n = kv.shape[-2]
    if factor <= 1 or n <= 1:
        return kv
    full = n // factor * factor
    parts = []
    if full:
        shape = (*kv.shape[:-2], n // factor, factor, kv.shape[-1])
        parts.append(kv[..., :full, :].float().reshape(shape).mean(-2))
    if full < n:
        parts.append(kv[..., full:, :].float().mean(-2, keepdim=True))
    return torch.cat(parts, -2).to(kv.dtype)
