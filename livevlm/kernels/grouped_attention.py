"""SDPA for grouped-query attention that never repeats keys and values: the query heads sharing a KV head
are folded into the query rows of that head.

With a mask (a chunk or a question over a stored context), transformers' SDPA path repeats every KV head for
each query head of its group (`repeat_kv`: Qwen2-VL-2B has 6 query heads per KV head) and then runs PyTorch's
SDPA, which on CPU upcasts the repeated copy: at 20k context tokens a 4-token chunk spends 131 ms per layer
there against 12 ms folded (one thread, bf16). Folding is exact algebra (each query row still meets its own
KV head's keys), so the outputs equal the repeated form's to the kernels' rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

GROUPED_SDPA = "sdpa_grouped"
MAX_FOLDED_MASK_BYTES = 256 << 20  # a folded mask above this (long prefill) goes to the repeated path
_LAYER_MASKS: ContextVar[torch.Tensor | None] = ContextVar("livevlm_layer_masks", default=None)


@contextmanager
def layer_masks(masks: torch.Tensor) -> Iterator[None]:
    """Within: layer i's attention reads `masks[i]` instead of the decoder's one mask (a fixed-shape decode
    whose layers hold different numbers of past tokens, `models.static_decode`)."""
    token = _LAYER_MASKS.set(masks)
    try:
        yield
    finally:
        _LAYER_MASKS.reset(token)


def foldable(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, **kwargs: Any) -> bool:
    """Whether `grouped_sdpa` folds this call: grouped heads, a per-query-row mask shared by the heads (or a
    single query row), no dropout, softcap, bias or returned weights."""
    heads, kv_heads, q_len = int(query.shape[1]), int(key.shape[1]), int(query.shape[2])
    if kv_heads == heads or heads % kv_heads or query.shape[0] != key.shape[0]:
        return False
    if kwargs.get("dropout", 0.0) or kwargs.get("softcap") is not None or kwargs.get("output_attentions"):
        return False
    if kwargs.get("position_bias") is not None:
        return False
    if mask is None:
        return q_len == 1  # a causal prefill without a mask keeps SDPA's is_causal path
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != q_len:
        return False
    return mask.shape[0] * (heads // kv_heads) * q_len * mask.shape[3] * mask.element_size() <= MAX_FOLDED_MASK_BYTES


def grouped_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """(batch, heads, q_len, dim) queries over (batch, kv_heads, k_len, dim) keys/values -> (batch, q_len, heads,
    dim), the layout transformers' attention functions return. Head h reads KV head h // (heads / kv_heads)."""
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * q_len, dim)  # row g * q_len + t: head kv * groups + g, token t
    if mask is not None:
        mask = mask.repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, -1).transpose(1, 2).contiguous()  # CUDA kernels return strided outputs


def grouped_attention_forward(fallback: Callable[..., Any]) -> Callable[..., Any]:
    """A transformers attention function: `grouped_sdpa` where `foldable`, else `fallback` (transformers' SDPA)
    with the same arguments."""

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        drop = dropout if getattr(module, "training", False) else 0.0
        per_layer = _LAYER_MASKS.get()
        if per_layer is not None:
            attention_mask = per_layer[module.layer_idx]
        if foldable(query, key, attention_mask, dropout=drop, **kwargs):
            return grouped_sdpa(query, key, value, attention_mask, scaling), None
        return fallback(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )

    return attention
