"""Read a question's attention queries inside the model, through transformers' attention dispatch table.

`enable_query_probe(lm)` registers `livevlm_probe_<impl>` in `AttentionInterface` (and its mask
function in `AttentionMaskInterface`) as a thin wrapper of the language model's current implementation
`<impl>`, and selects it on the language model only. The wrapper calls the original function with the same
arguments, so outputs are bit-identical; while `probe_queries()` is open in the current thread/context it also
keeps each layer's (rotated) query states. Nothing in transformers is patched. Adapters use it for
`question_queries`, which query-aware KV policies (retrieval, bilevel) read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from ..errors import ConfigError

PREFIX = "livevlm_probe_"
_ACTIVE: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("livevlm_query_probe", default=None)


@contextmanager
def probe_queries() -> Iterator[dict[int, torch.Tensor]]:
    """While open, collects `queries[layer] = (1, heads, q_len, head_dim)` from every attention call."""
    queries: dict[int, torch.Tensor] = {}
    token = _ACTIVE.set(queries)
    try:
        yield queries
    finally:
        _ACTIVE.reset(token)


def _wrap(base: Callable[..., Any]) -> Callable[..., Any]:
    def attention(module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        queries = _ACTIVE.get()
        if queries is not None and getattr(module, "layer_idx", None) is not None:
            queries[module.layer_idx] = query.detach()
        return base(module, query, *args, **kwargs)

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
        AttentionInterface.register(name, _wrap(ALL_ATTENTION_FUNCTIONS[current]))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    lm.set_attn_implementation(name)
