"""Read a question's attention queries inside the model, through transformers' attention dispatch table.

`enable_query_probe(lm)` registers `livevlm_probe_<impl>` in `AttentionInterface` (and its mask
function in `AttentionMaskInterface`) as a thin wrapper of the language model's current implementation
`<impl>`, and selects it on the language model only. The wrapper calls the original function with the same
arguments, so outputs are bit-identical; while `probe_queries()` is open in the current thread/context it also
keeps each layer's (rotated) query states. Nothing in transformers is patched. Adapters use it for
`question_queries`, which query-aware KV policies (retrieval, bilevel) read.

`select_inline(selection)` is the one-pass form: while open, the wrapper hands each layer's queries to an
`InlineSelection`, which may swap the context of that layer and the later ones (the policy's choice) before
the layer attends, so a question selects its context inside its own forward instead of a probe forward
before it. Layers then hold pasts of different lengths; the wrapper widens the mask to each layer's keys
(every past token visible, the new tokens causal among themselves: what `ChunkView` promises).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from ..errors import ConfigError
from ..records import InlineSelect

PREFIX = "livevlm_probe_"
_ACTIVE: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("livevlm_query_probe", default=None)
_INLINE: ContextVar[InlineSelection | None] = ContextVar("livevlm_inline_selection", default=None)

Select = InlineSelect


class InlineSelection:
    """Swaps pasts of a running forward's cache for those `select` returns, at the layer it returns them."""

    def __init__(self, cache: Any, select: Select) -> None:
        self.cache, self.select = cache, select
        self.start = [int(layer.get_seq_length()) for layer in cache.layers]  # tokens before this question
        self.queries: dict[int, torch.Tensor] = {}
        self.swapped: set[int] = set()

    def at_layer(self, layer: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Called before `layer` attends (its cache already holds the new tokens): record its query, swap the
        pasts `select` chooses now; returns this layer's new (keys, values) when it was swapped."""
        self.queries[layer] = query.detach()
        chosen = self.select(layer, self.queries)
        if not chosen:
            return None
        for i, (keys, values) in chosen.items():
            held = self.cache.layers[i]
            if held.keys is None:  # nothing in this layer yet (an empty view): the chosen past alone
                held.lazy_initialization(keys, values)
                held.keys, held.values, self.start[i] = keys, values, int(keys.shape[2])
                self.swapped.add(i)
                continue
            new_k, new_v = held.keys[:, :, self.start[i] :], held.values[:, :, self.start[i] :]
            held.keys = torch.cat([keys.to(new_k.dtype), new_k], 2)
            held.values = torch.cat([values.to(new_v.dtype), new_v], 2)
            self.start[i] = int(keys.shape[2])
        self.swapped.update(chosen)
        held = self.cache.layers[layer]
        return (held.keys, held.values) if layer in chosen else None

    def check_selected(self) -> None:
        """After the forward: refuse an answer over a context nothing was selected into (the model's attention
        did not go through the probe wrapper)."""
        if not self.swapped:
            raise RuntimeError(
                "one-pass KV selection never ran: the language model's attention does not dispatch through "
                "livevlm's query probe (enable_query_probe was not applied to it)"
            )


@contextmanager
def select_inline(selection: InlineSelection) -> Iterator[InlineSelection]:
    """While open, attention calls in this thread/context go through `selection.at_layer` first."""
    token = _INLINE.set(selection)
    try:
        yield selection
    finally:
        _INLINE.reset(token)


def fit_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, causal_skip: bool, device: torch.device
) -> torch.Tensor | None:
    """`mask` (..., q_len, n) for keys of length kv_len: the past (kv_len - q_len) all visible, the new tokens'
    own columns kept. A skipped mask (None) stays None where attention aligns causality bottom-right itself
    (`causal_skip`: flash) or nothing is causal (q_len 1); otherwise it is built."""
    if mask is not None and mask.shape[-1] == kv_len:
        return mask
    if mask is None:
        if causal_skip or q_len == 1 or kv_len == q_len:
            return None
        mask = torch.ones(1, 1, q_len, q_len, dtype=torch.bool, device=device).tril()
    tail = mask[..., -q_len:]
    shape = (*tail.shape[:-1], kv_len - q_len)
    if tail.dtype == torch.bool:
        return torch.cat([torch.ones(shape, dtype=torch.bool, device=tail.device), tail], -1)
    return torch.cat([torch.zeros(shape, dtype=tail.dtype, device=tail.device), tail], -1)  # additive: 0 = visible


@contextmanager
def probe_queries() -> Iterator[dict[int, torch.Tensor]]:
    """While open, collects `queries[layer] = (1, heads, q_len, head_dim)` from every attention call."""
    queries: dict[int, torch.Tensor] = {}
    token = _ACTIVE.set(queries)
    try:
        yield queries
    finally:
        _ACTIVE.reset(token)


def _wrap(base: Callable[..., Any], causal_skip: bool) -> Callable[..., Any]:
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        args_, mask = (args[1:], args[0]) if args else ((), kwargs.pop("attention_mask", None))
        layer = getattr(module, "layer_idx", None)
        queries, inline = _ACTIVE.get(), _INLINE.get()
        if queries is not None and layer is not None:
            queries[layer] = query.detach()
        if inline is not None and layer is not None:
            swapped = inline.at_layer(layer, query)
            if swapped is not None:
                key, value = swapped
        mask = fit_mask(mask, int(query.shape[2]), int(key.shape[2]), causal_skip, query.device)
        return base(module, query, key, value, mask, *args_, **kwargs)

    return attention


def enable_query_probe(lm: Any) -> None:
    """Route the language model `lm`'s attention through the recording wrapper (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = lm.config._attn_implementation
    if current.startswith(PREFIX):
        return
    if current not in ALL_ATTENTION_FUNCTIONS or current not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ConfigError(
            f"query-aware KV policies read queries through the attention dispatch table; the model's attention "
            f"implementation {current!r} is not in it: load the model with attn_implementation='sdpa'"
        )
    name = PREFIX + current
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrap(ALL_ATTENTION_FUNCTIONS[current], "flash" in current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    lm.set_attn_implementation(name)
