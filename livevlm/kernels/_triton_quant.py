"""Triton kernel of the quantized `quant.from_bytes`: one program per block of rows unpacks 8- or 4-bit codes,
applies the row's (scale, min) and writes the output dtype, so a chunk crosses PCIe as codes, not floats."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["rows"])  # sizes vary per call: one compile, not one per size class
def _dequant_kernel(
    meta_ptr, codes_ptr, out_ptr, rows, width, rb,
    BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_r = offs_r < rows
    mask = mask_r[:, None] & (offs_w < width)[None, :]
    scale = tl.load(meta_ptr + offs_r * 2, mask=mask_r, other=0.0)
    lo = tl.load(meta_ptr + offs_r * 2 + 1, mask=mask_r, other=0.0)
    if BITS == 8:
        code = tl.load(codes_ptr + offs_r[:, None] * rb + offs_w[None, :], mask=mask, other=0).to(tl.int32)
    else:
        byte = tl.load(codes_ptr + offs_r[:, None] * rb + (offs_w // 2)[None, :], mask=mask, other=0).to(
            tl.int32
        )
        code = (byte >> ((offs_w % 2) * 4)[None, :]) & 15
    values = code.to(tl.float32) * scale[:, None] + lo[:, None]
    tl.store(
        out_ptr + offs_r[:, None] * width + offs_w[None, :], values.to(out_ptr.dtype.element_ty), mask=mask
    )


def dequantize_triton(buf: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, bits: int) -> torch.Tensor:
    """Same contract as `quant.dequantize_torch`, on `buf`'s device."""
    if bits not in (4, 8):
        raise ValueError(f"quantized rows have 4 or 8 bits, got {bits}")
    width = int(shape[-1])
    rb = (width * bits + 7) // 8  # = quant.row_bytes (not imported: quant imports this module)
    rows = buf.numel() // (8 + rb)
    meta = buf[: rows * 8].view(torch.float32)
    codes = buf[rows * 8 :]
    out = torch.empty(rows, width, dtype=dtype, device=buf.device)
    if out.numel():
        block_w = min(128, triton.next_power_of_2(width))
        block_r = max(1, min(64, 4096 // block_w))  # not sized to `rows`: one compile per row width
        grid = (triton.cdiv(rows, block_r), triton.cdiv(width, block_w))
        _dequant_kernel[grid](meta, codes, out, rows, width, rb, BITS=bits, BLOCK_R=block_r, BLOCK_W=block_w)
    return out.view(tuple(shape))
