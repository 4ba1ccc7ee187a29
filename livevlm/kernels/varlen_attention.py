"""Varlen attention for the Qwen vision towers: every segment (frame, or Qwen2.5-VL attention window) of a block in
one call, with no host sync.

transformers' Qwen vision attention on SDPA copies the segment bounds to the host (`cu_seqlens.tolist()`: a device
sync on a GPU, so the CPU stops queueing work) and runs one SDPA per segment: at 336x336 a Qwen2.5-VL windowed
block is a sync and 9 calls, 32 blocks per frame. `varlen_attention` takes the bounds with the longest segment's
length (known once per grid) and answers in one call: equal segments (a grid the windows tile, the usual case) as
one batched SDPA, uneven ones as `sparse_row_attention` over every row (on CUDA a masked SDPA). Each query still attends
only to its own segment's keys. Used on CUDA by `models.qwen_vision.QwenVisionRunner` (see `vision_choice`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import Choice, forced

VARLEN = "varlen"
PER_SEGMENT = "torch"


def vision_choice(device: torch.device | str) -> Choice:
    """Whether a Qwen vision tower on `device` attends with `varlen_attention` ("varlen") or one SDPA per segment
    as transformers' forward does ("torch"), and why."""
    device = torch.device(device)
    mode = forced()
    if mode == "torch":
        return Choice(PER_SEGMENT, "forced by LIVEVLM_KERNELS=torch (transformers' per-segment SDPA)")
    if mode == "triton":
        return Choice(VARLEN, "forced by LIVEVLM_KERNELS=triton")
    if device.type == "cuda":
        return Choice(VARLEN, "cuda: one call per block, no host sync for the segment bounds")
    return Choice(PER_SEGMENT, f"tensors on {device.type}: transformers' per-segment SDPA (no device to sync)")


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    longest: int | None,
    scale: float | None = None,
) -> torch.Tensor:
    """(1, H, N, d) queries, keys and values; token t attends to the keys of its segment of `cu_seqlens` ((S+1,)
    bounds from 0 to N; None: one segment) -> (1, N, H, d), the layout transformers' attention functions return.
    `longest`: the longest segment's length (None: unknown, which takes the uneven path)."""
    if query.dim() != 4 or query.shape[0] != 1 or key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            "varlen_attention needs query, key and value of one shape (1, H, N, d); got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    _, heads, n, dim = query.shape
    segments = 1 if cu_seqlens is None else int(cu_seqlens.numel()) - 1
    if segments < 1:
        raise ValueError(f"varlen_attention needs cu_seqlens (S+1,) with S >= 1, got {tuple(cu_seqlens.shape)}")
    if segments == 1 or (longest is not None and segments * longest == n):  # every segment is `longest` long
        length = n // segments
        q, k, v = (t[0].view(heads, segments, length, dim).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (S, H, L, d)
        return out.transpose(1, 2).reshape(1, n, heads, dim)
    from .sparse_attention import sparse_row_attention

    rows = torch.arange(n, device=query.device)
    out = sparse_row_attention(query[0], key[0], value[0], rows, cu_seqlens, scale)  # (H, N, d)
    return out.transpose(0, 1).reshape(1, n, heads, dim)
