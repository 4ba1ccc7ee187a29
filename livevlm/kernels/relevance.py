"""Chunk relevance logits: each layer's question queries against the chunks' summary keys (GQA-grouped)."""

from __future__ import annotations

import torch


def chunk_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(layers, kv_heads, group, dim) queries x (layers, kv_heads, n, dim) keys -> (layers, kv_heads, group, n)
    scaled dot products (q.k / sqrt(dim)), float32."""
    return torch.einsum("lkgd,lknd->lkgn", queries.float(), keys.float()) * queries.shape[-1] ** -0.5
