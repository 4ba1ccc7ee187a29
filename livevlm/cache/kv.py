"""The stream's KV context behind a small store interface that only stores, with a policy registry.

    ingest:  view = store.ingest_view()  ─► [loop] forward(chunk, view) ─► store.commit(view, tokens)
    answer:  snap = store.snapshot()     ─► [queries = the question probed on store.probe_view(snap)]
             ─► view = store.answer_view(snap, queries) ─► the session prefills the question and decodes on it

The store never calls the model: the loop (`Session`) runs every forward on the views the store hands out.
`full` (the baseline) keeps every token in one cache; a view is a shallow copy whose layers append by
concatenation into new tensors, so what a forward adds reaches the stream only through `commit`, and a
question's tokens never reach it at all.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..errors import ConfigError, QuestionError
from ..records import KVLayout, load_fields
from ..registry import Registry
from .kv_configs import FullKVConfig, KVStats, parse_bytes
from .view import ChunkView


class KVStore(Protocol):
    """What `Session` needs from a KV policy; every method only reads or writes stored tensors."""

    name: str
    stats: KVStats
    needs_queries: bool
    """True when `answer_view` selects by the question's queries (the session then probes them)."""

    def ingest_view(self) -> Any:
        """A transformers `Cache` holding what the next chunk attends to; the forward appends into it."""
        ...

    def commit(
        self, view: Any, tokens: int, *, is_prompt: bool = False, pts_seconds: Sequence[float] = ()
    ) -> None:
        """Keep the last `tokens` of `view` (the system prompt, or a visual chunk) in the stream context."""
        ...

    def snapshot(self) -> Any:
        """An immutable view of the stream context as of now (cheap; taken under the session lock)."""
        ...

    def probe_view(self, snapshot: Any) -> Any:
        """A throwaway cache a question's queries are probed on (only when `needs_queries`)."""
        ...

    def answer_view(self, snapshot: Any, queries: torch.Tensor | None) -> Any:
        """A fresh cache to prefill the question into and decode on; never the stream's own."""
        ...

    # Optional, for policies that select inside the question's own forward (no probe forward):
    # inline_selector(snapshot) -> (cache, select) | None, `select` as `models.query_probe.Select`.

    def state_dict(self) -> dict[str, Any]:
        """The whole stored context as plain tensors, `Blob`s and JSON values (what a snapshot writes)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the stored context with what `state_dict` returned (read back from a snapshot)."""
        ...

    def close(self) -> None: ...


KV_POLICIES: Registry = Registry("KV policy")
"""name -> store class built as `cls(layout, config)`, with its config dataclass."""
KV_POLICIES.register("full", "livevlm.cache.kv:FullKV", config=FullKVConfig)
KV_POLICIES.register(
    "sink_window", "livevlm.cache.chunked:SinkWindowKV", config="livevlm.cache.kv_configs:SinkWindowConfig"
)
KV_POLICIES.register("retrieval", "livevlm.cache.select:RetrievalKV", config="livevlm.cache.kv_configs:RetrievalConfig")
KV_POLICIES.register("bilevel", "livevlm.cache.select:BilevelKV", config="livevlm.cache.kv_configs:BilevelConfig")
KV_POLICIES.register("fastv", "livevlm.cache.fastv:FastVKV", config="livevlm.cache.fastv:FastVConfig")


def register_kv_policy(name: str, config: Any = None) -> Callable[[Any], Any]:
    """Class decorator: make a KV store class (built as `cls(layout, config)`) available as `name`."""
    return KV_POLICIES.register(name, config=config)


def available_kv_policies() -> list[str]:
    return KV_POLICIES.names()


def build_kv_store(config: Any, layout: KVLayout) -> KVStore:
    """A fresh per-stream store from a policy config (see `kv_config`) and the model's KV layout."""
    config = kv_config_of(config)
    return KV_POLICIES.load(config.policy)(layout, config)


def kv_config_of(spec: Any) -> Any:
    """A policy config from a policy name or a config with a registered `.policy`."""
    if isinstance(spec, str):
        return KV_POLICIES.config_class(spec)()
    entry = KV_POLICIES.get(getattr(spec, "policy", None))
    return spec if isinstance(spec, entry.config_class()) else entry.config_class()(**vars(spec))


def kv_config(spec: Any, budget: int | str | None = None) -> Any:
    """What `--kv POLICY --kv-budget BYTES` mean: the policy's config, holding `budget` bytes of KV in memory
    (sink_window: all on the device; retrieval/bilevel: 1/4 device, 3/4 host, older chunks spill to disk).
    Without a budget, `spec` is returned unchanged (after checking its policy is registered)."""
    config = kv_config_of(spec)
    if budget is None:
        return spec
    if not hasattr(config, "with_budget"):
        bounded = [n for n in KV_POLICIES.names() if hasattr(KV_POLICIES.config_class(n), "with_budget")]
        raise ConfigError(f"a KV budget needs a bounded policy ({', '.join(bounded)}), not {config.policy!r}")
    total = parse_bytes(budget)
    if total <= 0:
        raise ConfigError(f"a KV budget must be a positive number of bytes (e.g. 256M), got {budget!r}")
    return config.with_budget(total)


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


class FullKV:
    """The baseline: every token of the stream stays in one dense cache (unbounded)."""

    name = "full"
    needs_queries = False

    def __init__(self, layout: KVLayout, config: FullKVConfig | None = None) -> None:
        self.cache: Any = ChunkView(None, layout.layers)
        self.device = layout.device
        self.stats = KVStats()
        self.chunks: list[tuple[int, int, tuple[float, ...]]] | None = []
        """Each committed chunk's token range [start, end) in the cache and its frames' stream times (None:
        restored from a snapshot that did not save them)."""

    def ingest_view(self) -> Any:
        return share_cache(self.cache)

    def commit(
        self, view: Any, tokens: int, *, is_prompt: bool = False, pts_seconds: Sequence[float] = ()
    ) -> None:
        self.cache = view  # the view is the stream's cache plus the new tokens
        end = int(view.get_seq_length())
        if not is_prompt and self.chunks is not None:
            self.chunks.append((end - tokens, end, tuple(float(t) for t in pts_seconds)))
        self.stats.tokens = end
        self.stats.bytes = cache_nbytes(view)

    def snapshot(self) -> Any:
        return share_cache(self.cache)

    def within(self, snapshot: Any, start: float, end: float, allow_empty: bool = False) -> Any:
        """`snapshot` limited to the prompt and the chunks with a frame in [start, end] stream seconds (one run
        of tokens, as the stream keeps them in time order). No chunk there: `QuestionError`, or with
        `allow_empty` (a pending frame in range, not yet a chunk) the prompt alone."""
        if self.chunks is None:
            raise QuestionError("within= needs chunk boundaries, which a snapshot of an older livevlm did not save")
        stop = int(snapshot.get_seq_length())
        chunks = [c for c in self.chunks if c[1] <= stop]
        inside = [c for c in chunks if any(start <= t <= end for t in c[2])]
        if not inside and not allow_empty:
            raise QuestionError(f"no frame of the stream lies between {start:g}s and {end:g}s")
        prompt = chunks[0][0] if chunks else stop
        a, b = (inside[0][0], inside[-1][1]) if inside else (prompt, prompt)
        if (a, b) == (prompt, stop):
            return snapshot
        keep = torch.cat([torch.arange(prompt), torch.arange(a, b)]).to(snapshot.layers[0].keys.device)
        per_layer = [(layer.keys.index_select(2, keep), layer.values.index_select(2, keep)) for layer in snapshot.layers]
        return ChunkView(per_layer, len(per_layer))

    def span(self, snapshot: Any, start: float, end: float) -> tuple[int, float | None, float | None]:
        """(chunks, first frame time, last frame time) of the chunks `within(snapshot, start, end)` reads."""
        stop = int(snapshot.get_seq_length())
        times = [c[2] for c in self.chunks or () if c[1] <= stop and any(start <= t <= end for t in c[2])]
        return len(times), (min(times[0]) if times else None), (max(times[-1]) if times else None)

    def probe_view(self, snapshot: Any) -> Any:
        return share_cache(snapshot)

    def answer_view(self, snapshot: Any, queries: torch.Tensor | None) -> Any:
        return snapshot

    def state_dict(self) -> dict[str, Any]:
        """The stream context as plain tensors: per layer (1, kv_heads, tokens, head_dim) keys and values."""
        layers = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in self.cache.layers]
        kept = all(isinstance(k, torch.Tensor) for k, _ in layers)
        return {
            "keys": [k for k, _ in layers] if kept else None,
            "values": [v for _, v in layers] if kept else None,
            "stats": dataclasses.asdict(self.stats),
            "chunks": None if self.chunks is None else [[a, b, list(pts)] for a, b, pts in self.chunks],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the stream context with one `state_dict` returned (tensors on any device)."""
        keys, values = state["keys"], state["values"]
        per_layer = None if keys is None else [(k.to(self.device), v.to(self.device)) for k, v in zip(keys, values)]
        self.cache = ChunkView(per_layer, len(self.cache.layers))
        load_fields(self.stats, state["stats"])
        saved = state.get("chunks", [] if not self.stats.tokens else None)
        self.chunks = None if saved is None else [(int(a), int(b), tuple(pts)) for a, b, pts in saved]

    def close(self) -> None:
        self.cache = None
