"""Average pooling of KV tokens (the bilevel view reads chunks that are not selected this way); Triton on CUDA,
the torch reference elsewhere."""

from __future__ import annotations

import torch

from ._backend import use_triton


def pool_tokens(kv: torch.Tensor, factor: int) -> torch.Tensor:
    """Average groups of `factor` consecutive tokens along dim -2 (a short tail group is averaged too).
    Averaged rotated keys give each group's exact mean logit for any query, so positions stay consistent."""
    if factor <= 1 or kv.shape[-2] <= 1:
        return kv
    if use_triton(kv.device):
        from ._triton_pool import pool_tokens_triton

        return pool_tokens_triton(kv, factor)
    return pool_tokens_torch(kv, factor)


def pool_tokens_torch(kv: torch.Tensor, factor: int) -> torch.Tensor:
    """The torch reference of `pool_tokens` (factor >= 2, at least two tokens): float32 means, cast back."""
    n = kv.shape[-2]
    full = n // factor * factor
    parts = []
    if full:
        shape = (*kv.shape[:-2], n // factor, factor, kv.shape[-1])
        parts.append(kv[..., :full, :].float().reshape(shape).mean(-2))
    if full < n:
        parts.append(kv[..., full:, :].float().mean(-2, keepdim=True))
    return torch.cat(parts, -2).to(kv.dtype)
