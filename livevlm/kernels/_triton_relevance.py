"""Triton kernel of `relevance.chunk_logits`: one program per (layer, kv head, block of chunks) loads the
group's queries once and keeps the running max of q.k over the chunk's mean key and its representative keys,
so the r+1 key sets are read once and no (r+1)-fold logits tensor is written."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(
    do_not_specialize=["n", "so_l", "so_h", "so_g"]
)  # sizes vary per call: one compile, not one per size class
def _chunk_logits_kernel(
    q_ptr, k_ptr, r_ptr, out_ptr,
    kv_heads, group, n, dim, reps, scale,
    sq_l, sq_h, sq_g, sq_d,
    sk_l, sk_h, sk_n, sk_d,
    sr_l, sr_r, sr_h, sr_n, sr_d,
    so_l, so_h, so_g, so_n,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    lh = tl.program_id(0)
    layer = lh // kv_heads
    head = lh % kv_heads
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < group
    mask_n = offs_n < n
    mask_d = offs_d < dim
    q_ptrs = q_ptr + layer * sq_l + head * sq_h + offs_g[:, None] * sq_g + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=mask_g[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    kmask = mask_d[:, None] & mask_n[None, :]
    k_ptrs = k_ptr + layer * sk_l + head * sk_h + offs_d[:, None] * sk_d + offs_n[None, :] * sk_n
    k = tl.load(k_ptrs, mask=kmask, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N): already transposed
    best = tl.dot(q, k, input_precision=PRECISION)
    for r in range(reps):
        r_ptrs = (
            r_ptr + layer * sr_l + r * sr_r + head * sr_h + offs_d[:, None] * sr_d + offs_n[None, :] * sr_n
        )
        rk = tl.load(r_ptrs, mask=kmask, other=0.0).to(tl.float32)
        best = tl.maximum(best, tl.dot(q, rk, input_precision=PRECISION))
    o_ptrs = out_ptr + layer * so_l + head * so_h + offs_g[:, None] * so_g + offs_n[None, :] * so_n
    tl.store(o_ptrs, best * scale, mask=mask_g[:, None] & mask_n[None, :])


def chunk_logits_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    reps: torch.Tensor | None,
    precision: str = "tf32x3",
    block_n: int = 64,
    num_warps: int = 4,
) -> torch.Tensor:
    """Same contract as `relevance.chunk_logits_torch`; strided keys and reps are read in place. `precision`,
    `block_n` and `num_warps` are tuning knobs (benchmarks/kernels.py times the variants): on an H200 "tf32x3"
    (three tensor-core passes, float32-level error) ran 36x faster than "ieee" (CUDA-core float32) at 10k chunks."""
    layers, kv_heads, group, dim = queries.shape
    n = int(keys.shape[2])
    out = torch.empty(layers, kv_heads, group, n, dtype=torch.float32, device=queries.device)
    if not out.numel():
        return out
    count = 0 if reps is None else int(reps.shape[1])
    r = keys[:, None] if reps is None else reps  # an unread stand-in when there are no reps
    grid = (layers * kv_heads, triton.cdiv(n, block_n))
    _chunk_logits_kernel[grid](
        queries, keys, r, out,
        kv_heads, group, n, dim, count, dim**-0.5,
        *queries.stride(), *keys.stride(), *r.stride(), *out.stride(),
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dim)), PRECISION=precision, num_warps=num_warps,
    )  # fmt: skip
    return out
