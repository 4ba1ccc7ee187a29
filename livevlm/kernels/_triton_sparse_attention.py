"""Triton kernel of `sparse_attention.sparse_row_attention`: one program per (block of query rows, head), rows
taken in token order (so a block spans one or a few neighbouring segments), an online softmax over the union of
the block's key ranges with each row masked to its own segment, accumulated in float32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import interpreting

LOG2E = 1.4426950408889634


# the number of rows varies per call: one compile, not one per size class
@triton.jit(do_not_specialize=["n"])
def _sparse_row_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, order_ptr, start_ptr, end_ptr,
    n, dim, scale_log2,
    sq_h, sq_n, sq_d,
    sk_h, sk_n, sk_d,
    sv_h, sv_n, sv_d,
    so_h, so_n, so_d,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < n
    mask_d = offs_d < dim
    qi = tl.load(order_ptr + offs_m, mask=mask_m, other=0)  # which query (and output) row each slot holds
    lo_i = tl.load(start_ptr + offs_m, mask=mask_m, other=0)
    hi_i = tl.load(end_ptr + offs_m, mask=mask_m, other=0)  # padded slots: an empty range
    lo = tl.min(tl.where(mask_m, lo_i, 2147483647), axis=0)
    hi = tl.max(hi_i, axis=0)
    q_ptrs = q_ptr + head * sq_h + qi[:, None] * sq_n + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    # UPCAST: float32 dots for 16-bit inputs (the interpreter's bfloat16 dot is wrong: it multiplies the bits)
    if UPCAST:
        q = q.to(tl.float32)
    # the running max starts finite: a row with no key in a block gets weight 0 there, never NaN
    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_block = offs_n < hi
        k_ptrs = k_ptr + head * sk_h + offs_n[None, :] * sk_n + offs_d[:, None] * sk_d
        k = tl.load(k_ptrs, mask=mask_d[:, None] & in_block[None, :], other=0.0)  # (BLOCK_D, BLOCK_N)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * scale_log2
        own = (offs_n[None, :] >= lo_i[:, None]) & (offs_n[None, :] < hi_i[:, None])
        s = tl.where(own, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_ptrs = v_ptr + head * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d
        v = tl.load(v_ptrs, mask=in_block[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = o_ptr + head * so_h + qi[:, None] * so_n + offs_d[None, :] * so_d
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def segment_bounds(
    rows: torch.Tensor, cu_seqlens: torch.Tensor | None, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) int32 start and end of each row's segment (on the rows' device, no host sync)."""
    if cu_seqlens is None:
        return torch.zeros_like(rows, dtype=torch.int32), torch.full_like(rows, total, dtype=torch.int32)
    cu = cu_seqlens.to(rows.device, torch.int32)
    end = torch.searchsorted(cu, rows.to(torch.int32), right=True)
    return cu[end - 1], cu[end]


def sparse_row_attention_triton(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    precision: str = "tf32x3",
    block_m: int = 16,
    block_n: int = 64,
    num_warps: int = 4,
    upcast: bool | None = None,
) -> torch.Tensor:
    """Same contract as `sparse_attention.sparse_row_attention_torch`; the (H, n, d) result is a view of an
    (n, H, d) buffer, the layout the block's output projection reads. `precision` (float32 inputs), `block_m`,
    `block_n` and `num_warps` are tuning knobs (benchmarks/kernels.py times the variants); `upcast` makes 16-bit
    inputs use float32 dots (None: only bfloat16 in the interpreter), else their own, with P rounded as flash does."""
    heads, n, dim = q.shape
    out = torch.empty(n, heads, dim, dtype=q.dtype, device=q.device).transpose(0, 1)
    if not n:
        return out
    if upcast is None:
        upcast = q.dtype == torch.bfloat16 and interpreting()
    sorted_rows, order = torch.sort(rows)  # token order groups the rows by segment (segments are contiguous)
    start, end = segment_bounds(sorted_rows, cu_seqlens, int(keys.shape[1]))
    grid = (triton.cdiv(n, block_m), heads)
    _sparse_row_attention_kernel[grid](
        q, keys, values, out, order, start, end,
        n, dim, scale * LOG2E,
        *q.stride(), *keys.stride(), *values.stride(), *out.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        PRECISION=precision, UPCAST=upcast, num_warps=num_warps,
    )  # fmt: skip
    return out
