"""KV chunks as host bytes: raw, or quantized to 8/4 bits per (layer, head, token) row, and back.

The host tier of the KV store calls these when it moves a chunk off the device and when it loads one back.
Loading to CUDA copies the (small) bytes to the device and dequantises there with a Triton kernel; elsewhere
the torch reference runs. An int4 row of odd width is padded with one zero code (ceil(width / 2) bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._backend import use_triton
from .transfer import upload


def row_bytes(width: int, bits: int) -> int:
    """Bytes of one row's codes: width for 8 bits, ceil(width / 2) for 4 bits."""
    return (width * bits + 7) // 8


def to_bytes(kv: torch.Tensor, bits: int) -> torch.Tensor:
    """`kv` as a flat uint8 host tensor: raw (bits=0) or [float32 (scale, min) per row | 8/4-bit codes], computed
    where `kv` lives (on a GPU, the GPU; `to_bytes_on_device` and `models.devices.download` copy it without
    waiting)."""
    return to_bytes_on_device(kv, bits).to("cpu")


def to_bytes_on_device(kv: torch.Tensor, bits: int) -> torch.Tensor:
    """`to_bytes`' flat uint8 tensor, on `kv`'s device."""
    if not bits:
        return kv.detach().contiguous().view(-1).view(torch.uint8)
    rows = kv.detach().to(torch.float32).reshape(-1, kv.shape[-1])
    lo = rows.amin(-1, keepdim=True)
    scale = ((rows.amax(-1, keepdim=True) - lo) / (2**bits - 1)).clamp_min(1e-12)
    codes = ((rows - lo) / scale).round_().clamp_(0, 2**bits - 1).to(torch.uint8)
    if bits == 4:
        if codes.shape[1] % 2:
            codes = torch.nn.functional.pad(codes, (0, 1))
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    meta = torch.cat([scale, lo], -1).contiguous().view(-1).view(torch.uint8)
    return torch.cat([meta, codes.reshape(-1)])


def from_bytes(
    buf: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, bits: int, device: torch.device | str
) -> torch.Tensor:
    """The inverse of `to_bytes`: a tensor of `shape` and `dtype` on `device`."""
    if not bits:
        return upload(buf.view(dtype).view(tuple(shape)), device)
    device = torch.device(device)
    if use_triton(device):
        from ._triton_quant import dequantize_triton

        return dequantize_triton(upload(buf, device), shape, dtype, bits)
    return upload(dequantize_torch(buf, shape, dtype, bits), device)


def dequantize_torch(buf: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, bits: int) -> torch.Tensor:
    """The torch reference of the quantized `from_bytes`, on `buf`'s device."""
    width = shape[-1]
    rb = row_bytes(width, bits)
    rows = buf.numel() // (8 + rb)
    meta = buf[: rows * 8].view(torch.float32).view(rows, 2)
    codes = buf[rows * 8 :].view(rows, rb)
    if bits == 4:
        codes = torch.stack([codes & 15, codes >> 4], -1).view(rows, 2 * rb)[:, :width]
    values = codes.float() * meta[:, :1] + meta[:, 1:]
    return values.view(tuple(shape)).to(dtype)
