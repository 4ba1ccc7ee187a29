"""The stream's KV context behind a small store interface, with a policy registry.

`full` (the baseline) keeps every token in one transformers `DynamicCache`. A question is answered on a
cache built from a `snapshot()`: for `full` it shares the stream's key/value tensors (transformers'
`DynamicLayer.update` concatenates into new tensors, never writes in place), so the answer's tokens never
reach the stream context and ingestion can go on while a question is answered.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import ConfigError


@dataclass
class KVStats:
    """Size of the stream's cached context."""

    tokens: int = 0
    bytes: int = 0


class KVStore(Protocol):
    """What `Session` needs from a KV policy: append chunks, snapshot, build a cache to answer on."""

    name: str
    stats: KVStats

    def append(
        self,
        adapter: Any,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        *,
        is_prompt: bool = False,
        pts_seconds: Sequence[float] = (),
    ) -> None:
        """Prefill `embeds` at `positions` into the stream context (the system prompt or a visual chunk)."""
        ...

    def snapshot(self) -> Any:
        """An immutable view of the stream context as of now (cheap; taken under the session lock)."""
        ...

    def answer_cache(self, snapshot: Any, adapter: Any, question_ids: Sequence[int]) -> Any:
        """A transformers `Cache` to prefill the question into and decode on; never the stream's own."""
        ...

    def close(self) -> None: ...


_POLICIES: dict[str, Callable[..., KVStore]] = {}


def register_kv_policy(name: str) -> Callable[[Callable[..., KVStore]], Callable[..., KVStore]]:
    """Class decorator: make a KV policy available as `name` in configs and on the CLI."""

    def deco(cls: Callable[..., KVStore]) -> Callable[..., KVStore]:
        _POLICIES[name] = cls
        return cls

    return deco


def available_kv_policies() -> list[str]:
    return sorted(_POLICIES)


def build_kv_store(spec: Any, adapter: Any) -> KVStore:
    """A fresh per-stream store from a policy name or a config object with a `.policy` attribute."""
    name = spec if isinstance(spec, str) else getattr(spec, "policy", None)
    if name not in _POLICIES:
        raise ConfigError(f"unknown KV policy {name!r}; choose one of {', '.join(available_kv_policies())}")
    return _POLICIES[name](adapter) if isinstance(spec, str) else _POLICIES[name](adapter, spec)


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the key/value tensors of a transformers cache."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.nbytes
    return total


def share_cache(cache: Any) -> Any:
    """A cache sharing `cache`'s tensors; appending to it leaves `cache` untouched."""
    snap = copy.copy(cache)
    snap.layers = [copy.copy(layer) for layer in cache.layers]
    return snap


@register_kv_policy("full")
class FullKV:
    """The baseline: every token of the stream stays in one dense cache (unbounded)."""

    name = "full"

    def __init__(self, adapter: Any, config: Any = None) -> None:
        self.cache = adapter.new_cache()
        self.stats = KVStats()

    def append(
        self,
        adapter: Any,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        *,
        is_prompt: bool = False,
        pts_seconds: Sequence[float] = (),
    ) -> None:
        adapter.forward(embeds, positions, self.cache)
        self.stats.tokens = int(self.cache.get_seq_length())
        self.stats.bytes = cache_nbytes(self.cache)

    def snapshot(self) -> Any:
        return share_cache(self.cache)

    def answer_cache(self, snapshot: Any, adapter: Any, question_ids: Sequence[int]) -> Any:
        return snapshot

    def close(self) -> None:
        self.cache = None
