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
    """The torch reference of `chunk_logits`: one batched matmul per key set. The keys (a strided slice of the
    summary log) are made contiguous first, which is faster than letting the matmul stride them."""
    q = queries.float()
    scale = queries.shape[-1] ** -0.5
    logits = torch.matmul(q, keys.float().contiguous().transpose(-1, -2)) * scale
    for r in range(0 if reps is None else int(reps.shape[1])):
        rep = reps[:, r].float().contiguous()  # type: ignore[index]
        logits = torch.maximum(logits, torch.matmul(q, rep.transpose(-1, -2)) * scale)
    return logits
