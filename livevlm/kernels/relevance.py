"""Chunk relevance logits: each layer's question queries against the chunks' summary keys (GQA-grouped)."""

from __future__ import annotations

import torch


def chunk_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(layers, kv_heads, group, dim) queries x (layers, kv_heads, n, dim) keys -> (layers, kv_heads, group, n)
    scaled dot products (q.k / sqrt(dim)), float32. One batched matmul; the keys (a strided slice of the
    summary log) are made contiguous first, which is faster than letting the matmul stride them."""
    keys = keys.float().contiguous()
    return torch.matmul(queries.float(), keys.transpose(-1, -2)) * queries.shape[-1] ** -0.5
