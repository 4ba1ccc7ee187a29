"""Triton kernel of `pool.pool_tokens`: one program per (row of leading dims, block of groups, block of
channels) sums the group's tokens in float32 and writes the mean in the input dtype, one pass over the KV."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(
    do_not_specialize=["n", "groups", "sx_b", "so_b"]
)  # sizes vary per call: one compile, not one per size class
def _pool_kernel(
    x_ptr, out_ptr, n, dim, factor, groups,
    sx_b, sx_n, sx_d, so_b, so_n, so_d,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < groups
    mask_d = offs_d < dim
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for i in range(factor):
        tok = offs_m * factor + i
        m = (mask_m & (tok < n))[:, None] & mask_d[None, :]
        acc += tl.load(x_ptr + b * sx_b + tok[:, None] * sx_n + offs_d[None, :] * sx_d, mask=m, other=0.0).to(
            tl.float32
        )
    count = tl.maximum(tl.minimum(n - offs_m * factor, factor), 1).to(tl.float32)  # >= 1 in masked lanes too
    mean = acc / count[:, None]
    o_ptrs = out_ptr + b * so_b + offs_m[:, None] * so_n + offs_d[None, :] * so_d
    tl.store(o_ptrs, mean.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def pool_tokens_triton(kv: torch.Tensor, factor: int) -> torch.Tensor:
    """Same contract as `pool.pool_tokens_torch`."""
    n, dim = int(kv.shape[-2]), int(kv.shape[-1])
    groups = -(-n // factor)
    x = kv.reshape(-1, n, dim)
    out = torch.empty(x.shape[0], groups, dim, dtype=kv.dtype, device=kv.device)
    if out.numel():
        block_d = min(128, triton.next_power_of_2(dim))
        block_m = 32  # fixed, not sized to `groups`: one compiled kernel whatever the chunk's token count
        grid = (x.shape[0], triton.cdiv(groups, block_m), triton.cdiv(dim, block_d))
        _pool_kernel[grid](
            x, out, n, dim, factor, groups, *x.stride(), *out.stride(), BLOCK_M=block_m, BLOCK_D=block_d
        )
    return out.reshape(*kv.shape[:-2], groups, dim)
