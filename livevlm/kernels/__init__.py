"""Low-level ops of the hot paths, one module per op, each with its backend visible.

    similarity        unit_rows, merge_dropped, top_k, dither_rank   (pruners)      torch
    pool              pool_tokens                                    (KV bilevel)   triton on cuda, else torch
    quant             to_bytes / from_bytes (8/4-bit KV rows)        (KV host tier) triton dequant on cuda, else torch
    relevance         chunk_logits (question queries x summary keys) (KV selection) triton on cuda, else torch
    sparse_attention  sparse_row_attention (changed rows x the keys  (ViT cache)    masked SDPA on cuda (triton
                      of their own frame / window, varlen)                         when forced), else torch
    linear            RowLinears (few-row linears, ViT cache)        onednn on fp32 weights as they are (no copy)
    packed_linear     PackedLinear, pack_linears (every linear but   bf16 on CPU: oneDNN's blocked layout, packed
                      the output head; bit-identical products)       once at load in place of the plain weight
    grouped_attention grouped-query SDPA without repeated KV (LLM)   torch SDPA, query heads folded into rows
    varlen_attention  varlen_attention (a Qwen vision block's        (ViT)          varlen on cuda (op
                      frames / windows in one call, no host sync)                  "vision_attention"), else the
                                                                                   tower's per-segment SDPA calls

`backend()` says which backend each op runs and why; `LIVEVLM_KERNELS=torch` forces the torch references,
`LIVEVLM_KERNELS=triton` the Triton kernels. Triton modules (`_triton_*.py`) are imported only when chosen.
"""

from __future__ import annotations

import torch

from ._backend import (
    FORCE_ENV,
    Choice,
    KernelUnavailableError,
    cpu_flags,
    forced_torch,
    triton_choice,
    triton_version,
)
from .attention import sdpa_choice
from .linear import RowLinears, linear_choice
from .packed_linear import PackedLinear, pack_choice, pack_linears, packed_report
from .pool import pool_tokens
from .quant import from_bytes, to_bytes
from .relevance import chunk_logits
from .similarity import dither_rank, merge_dropped, top_k, unit_rows
from .sparse_attention import sparse_row_attention, sparse_row_choice
from .varlen_attention import varlen_attention, vision_choice

TRITON_OPS = ("pool", "quant", "relevance", "sparse_attention")  # ops with a Triton kernel (what =triton runs)


def backend(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> dict[str, Choice]:
    """Op -> the backend that runs it for weights of `dtype` on `device`, with the reason."""
    reference = Choice(
        "torch", "forced by LIVEVLM_KERNELS=torch" if forced_torch() else "reference (only backend)"
    )
    out = {"similarity": reference}
    out.update(dict.fromkeys(TRITON_OPS, triton_choice(device)))
    out["sparse_attention"] = sparse_row_choice(device)  # its Triton kernel is slower than a masked SDPA on cuda
    out["linear"] = linear_choice(torch.device(device), dtype)
    out["packed_linear"] = pack_choice(device, dtype)
    out["vision_attention"] = vision_choice(device)
    out["sdpa_backends"] = sdpa_choice(device)
    return out


__all__ = [
    "FORCE_ENV",
    "TRITON_OPS",
    "Choice",
    "KernelUnavailableError",
    "PackedLinear",
    "RowLinears",
    "backend",
    "chunk_logits",
    "cpu_flags",
    "dither_rank",
    "forced_torch",
    "from_bytes",
    "linear_choice",
    "merge_dropped",
    "pack_choice",
    "pack_linears",
    "packed_report",
    "pool_tokens",
    "sparse_row_attention",
    "sparse_row_choice",
    "to_bytes",
    "top_k",
    "triton_choice",
    "triton_version",
    "unit_rows",
    "varlen_attention",
    "vision_choice",
]
