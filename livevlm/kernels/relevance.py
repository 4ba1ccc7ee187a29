"""Chunk relevance logits: each layer's question queries against the chunks' summary keys (GQA-grouped), with
the max over each chunk's representative keys fused in (Triton on CUDA, torch reference elsewhere)."""

from __future__ import annotations

import torch

from ._backend import use_triton


def chunk_logits(queries: torch.Tensor, keys: torch.Tensor, reps: torch.Tensor | None = None) -> torch.Tensor:
    """(layers, kv_heads, group, dim) queries x (layers, kv_heads, n, dim) keys -> (layers, kv_heads, group, n)
    scaled dot products (q.k / sqrt(dim)), float32; with `reps` (layers, r, kv_heads, n, dim) the max over the
    keys and every representative key of each chunk."""
    if reps is not None and not reps.shape[1]:
        reps = None
    if use_triton(queries.device):
        from ._triton_relevance import chunk_logits_triton

        return chunk_logits_triton(queries, keys, reps)
    return chunk_logits_torch(queries, keys, reps)


def chunk_logits_torch(
    queries: torch.Tensor, keys: torch.Tensor, reps: torch.Tensor | None = None
) -> torch.Tensor:
    """The torch reference of `chunk_logits`: one batched matmul for the keys and one for all representative keys
    (then the max over them), scaled once. Each key set (a strided slice of the summary log) is made contiguous
    first, which is faster than letting the matmul stride it."""
    q = queries.float()
    logits = torch.matmul(q, keys.float().contiguous().transpose(-1, -2))
    if reps is not None and reps.shape[1]:
        per_rep = torch.matmul(q.unsqueeze(1), reps.float().contiguous().transpose(-1, -2))  # (l, r, h, g, n)
        logits = torch.maximum(logits, per_rep.amax(1))
    return logits * queries.shape[-1] ** -0.5
