"""What the fixed-shape model calls share (`static_decode`, `static_prefill`): a cache layer over a buffer of
fixed length, and the bucketed sizes those buffers take so that a few shapes serve a stream whose context grows.

    rows_bucket(n)  new tokens per call, rounded up to a multiple of 32
    past_bucket(n)  past tokens: 256 x 2^(k/4), rounded up to a multiple of 64 (at most ~19% padding)

A buffer (and the CUDA graph captured over it) is reused by every later call of the same bucket.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

ROWS_STEP = 32
PAST_MIN = 256
PAST_STEPS_PER_DOUBLING = 4
BUCKETS_KEPT = 2
"""Buckets (buffers and graphs) a session keeps per kind: a growing context moves to the next one and never comes
back; a bounded one stays in one or straddles two."""


def rows_bucket(n: int) -> int:
    return max(ROWS_STEP, -(-n // ROWS_STEP) * ROWS_STEP)


def past_bucket(n: int) -> int:
    """The smallest capacity 256 x 2^(k/4) (rounded up to 64) that holds `n` past tokens."""
    if n <= PAST_MIN:
        return PAST_MIN
    k = math.ceil(PAST_STEPS_PER_DOUBLING * math.log2(n / PAST_MIN) - 1e-9)
    size = -(-math.ceil(PAST_MIN * 2 ** (k / PAST_STEPS_PER_DOUBLING)) // 64) * 64
    return size if size >= n else size + 64


def fitting_bucket(kept: OrderedDict[tuple[int, int], Any], rows: int, past: int) -> tuple[int, int]:
    """The bucket (rows, past) for a call of `rows` new tokens over `past` past ones: a kept one that holds them
    with at most one step more of either (so a size that wavers across a boundary settles in the larger bucket
    instead of rebuilding the smaller one each time), else the exact bucket."""
    exact = (rows_bucket(rows), past_bucket(past))
    limit = (exact[0] + ROWS_STEP, past_bucket(exact[1] + 1))
    fits = [k for k in kept if exact[0] <= k[0] <= limit[0] and exact[1] <= k[1] <= limit[1]]
    return min(fits, key=lambda k: (k[1], k[0])) if fits else exact


def keep_buckets(
    kept: OrderedDict[tuple[int, int], Any], key: tuple[int, int], value: Any
) -> OrderedDict[tuple[int, int], Any]:
    """`kept` (buffers by (rows, past) bucket) with `value` at `key`, most recent last, without those of a shorter
    past (a growing context never returns to them: they would hold memory for nothing), at most `BUCKETS_KEPT`."""
    out = OrderedDict((k, v) for k, v in kept.items() if k != key and k[1] >= key[1])
    out[key] = value
    while len(out) > BUCKETS_KEPT:
        out.popitem(last=False)
    return out


def past_lengths(cache: Any) -> list[int]:
    """Tokens each layer of a transformers cache holds (0 for a layer not filled yet)."""
    return [int(layer.keys.shape[2]) if getattr(layer, "keys", None) is not None else 0 for layer in cache.layers]


class FixedLayer(CacheLayerMixin):
    """One layer's keys / values in a buffer of fixed length; a call writes its tokens at `at` (a device tensor
    of slots)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.at = keys, values, at
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys.index_copy_(2, self.at, key_states)
        self.values.index_copy_(2, self.at, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[2]

    def get_max_length(self) -> int:
        return self.keys.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0


def fixed_shape_refusal(adapter: Any, lengths: list[int], what: str) -> str | None:
    """Why this model's decoder cannot run on fixed buffers with per-layer masks over `what` (a cache, a view)
    whose layers hold `lengths` past tokens, or None."""
    from ..kernels.grouped_attention import GROUPED_SDPA
    from .lm_side import LanguageModelSide
    from .query_probe import PREFIX as PROBE_PREFIX

    if not isinstance(adapter, LanguageModelSide):
        return "it needs a transformers decoder adapter"
    impl = str(getattr(adapter._lm.config, "_attn_implementation", None)).removeprefix(PROBE_PREFIX)
    if impl not in (GROUPED_SDPA, "sdpa"):
        return f"it needs SDPA attention (the model runs {impl!r})"
    text = adapter.model.config.get_text_config()
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        return "it needs every layer to attend to the whole context (this model has sliding-window layers)"
    if impl == "sdpa" and len(set(lengths)) > 1:  # transformers' SDPA reads one mask for every layer
        return (f"{what} layers hold pasts of different lengths, which transformers' SDPA cannot mask (one mask for "
                "every layer; livevlm's grouped SDPA reads one per layer)")  # fmt: skip
    return None
