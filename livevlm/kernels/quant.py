"""KV chunks as host bytes: raw, or quantized to 8/4 bits per (layer, head, token) row, and back.

Torch reference implementation; the host tier of the KV store calls these when it moves a chunk off the
device and when it loads one back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_bytes(kv: torch.Tensor, bits: int) -> torch.Tensor:
    """`kv` as a flat uint8 host tensor: raw (bits=0) or [float32 (scale, min) per row | 8/4-bit codes]."""
    if not bits:
        return kv.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
    rows = kv.detach().to("cpu", torch.float32).reshape(-1, kv.shape[-1])
    lo = rows.amin(-1, keepdim=True)
    scale = ((rows.amax(-1, keepdim=True) - lo) / (2**bits - 1)).clamp_min(1e-12)
    codes = ((rows - lo) / scale).round_().clamp_(0, 2**bits - 1).to(torch.uint8)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    meta = torch.cat([scale, lo], -1).contiguous().view(-1).view(torch.uint8)
    return torch.cat([meta, codes.reshape(-1)])


def from_bytes(
    buf: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, bits: int, device: torch.device | str
) -> torch.Tensor:
    """The inverse of `to_bytes`: a tensor of `shape` and `dtype` on `device`."""
    if not bits:
        return buf.view(dtype).view(tuple(shape)).to(device)
    width = shape[-1]
    rows = buf.numel() // (8 + width * bits // 8)
    meta = buf[: rows * 8].view(torch.float32).view(rows, 2)
    codes = buf[rows * 8 :].view(rows, width * bits // 8)
    if bits == 4:
        codes = torch.stack([codes & 15, codes >> 4], -1).view(rows, width)
    values = codes.float() * meta[:, :1] + meta[:, 1:]
    return values.view(tuple(shape)).to(device, dtype)
