"""Low-level ops of the hot paths, one module per op, each with its backend visible.

    similarity  unit_rows, merge_dropped, top_k, dither_rank   (pruners)      torch
    pool        pool_tokens                                    (KV bilevel)   torch
    quant       to_bytes / from_bytes (8/4-bit KV rows)        (KV host tier) torch
    relevance   chunk_logits (question queries x summary keys) (KV selection) torch
    linear      PackedLinears (few-row linears, ViT cache)     onednn prepack where the CPU supports it

`backend()` says which backend each op runs and why; `LIVEVLM_KERNELS=torch` forces the torch references.
"""

from __future__ import annotations

import torch

from ._backend import FORCE_ENV, Choice, cpu_flags, forced_torch
from .linear import PackedLinears, linear_choice
from .pool import pool_tokens
from .quant import from_bytes, to_bytes
from .relevance import chunk_logits
from .similarity import dither_rank, merge_dropped, top_k, unit_rows

_TORCH_ONLY = ("similarity", "pool", "quant", "relevance")


def backend(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> dict[str, Choice]:
    """Op -> the backend that runs it for weights of `dtype` on `device`, with the reason."""
    reference = Choice("torch", "forced by LIVEVLM_KERNELS=torch" if forced_torch() else "reference (only backend)")
    out = {name: reference for name in _TORCH_ONLY}
    out["linear"] = linear_choice(torch.device(device), dtype)
    return out


__all__ = [
    "FORCE_ENV",
    "Choice",
    "PackedLinears",
    "backend",
    "chunk_logits",
    "cpu_flags",
    "dither_rank",
    "forced_torch",
    "from_bytes",
    "linear_choice",
    "merge_dropped",
    "pool_tokens",
    "to_bytes",
    "top_k",
    "unit_rows",
]
