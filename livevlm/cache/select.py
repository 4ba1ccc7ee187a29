"""Query-time KV selection over a tiered chunk store: the `retrieval` (ReKV-like) and `bilevel` (Video-XL-2-like)
policies.

    ingest_view:    sink | [summaries] | memory (the `memory` most novel older chunks, dense) | window
    answer_view(snapshot, queries):   (queries: the session ran the question once on `probe_view(snapshot)`,
                                       the ingestion view, and probed every layer's per-token queries)
      1. score    the answer position's query of the late layers against every chunk's mean key and its
                  atypical keys (max) -> attention mass per chunk (`scoring.py`)
      2. select   one choice for every layer: the top_k chunks, the memory and the window dense;
                  bilevel: the others pooled / summary / dropped (the most relevant first, up to rest_max)
      3. load     the selected chunks' dense KV from their tiers, gathered into a fresh ChunkView
The store is only read: later questions see it unchanged. `RetrievalConfig(per_layer=True, query="mean",
key_reps=0, memory=0)` is ReKV's per-layer choice by mean query and mean key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import QuestionError
from ..kernels._backend import use_triton
from ..records import InlineSelect, KVLayout
from .chunked import ChunkedKV
from .chunks import ChunkStore
from .kv_configs import BilevelConfig, RetrievalConfig
from .scoring import chunk_relevance, layer_ids, reduce_queries
from .select_parts import equal_lengths, pool_all, ranked, warm_answer_kernels
from .summary_log import SUMMARY_BLOCK

SCORE_SPAN = 16 * SUMMARY_BLOCK
"""Chunks scored per call: few calls, a bounded temporary (keys of SCORE_SPAN chunks of the scoring layers)."""
from .tiers import ChunkRecord
from .view import ChunkView


@dataclass(frozen=True)
class _Snapshot:
    sink: torch.Tensor | None
    records: tuple[ChunkRecord, ...]
    span: tuple[int, int] | None = None
    """Chunks [lo, hi) the answer may read (`within`); None: all of them."""

    def allowed(self, lo: int, hi: int) -> range:
        """Chunks [lo, hi) inside the span (a range: membership and length without a loop over the stream)."""
        if self.span is None:
            return range(lo, hi)
        return range(max(lo, self.span[0]), min(hi, self.span[1]))


class _TieredKV(ChunkedKV):
    """Every chunk kept down the tiers, one summary row per chunk, questions scored inside the model."""

    summaries_in_ingest: int | None = 0
    needs_queries = True

    def __init__(self, layout: KVLayout, config: Any) -> None:
        super().__init__(layout, config)
        self.store = ChunkStore(config.tiers, self.layout, self.dtype, self.device, key_reps=config.key_reps)
        self._query_heads = layout.query_heads or layout.kv_heads
        self._warm_checked = False

    def _first(self, n: int) -> int:
        """Index of the first chunk of the window among n."""
        return n - (n if self.config.window is None else min(self.config.window, n))

    def _memory(self, first: int) -> list[int]:
        """The `memory` most novel chunks before the window that still have dense KV, in stream order."""
        return self.store.salient(first, self.config.memory)

    def _ingest_context(self, records: Sequence[ChunkRecord] | None = None) -> list[torch.Tensor]:
        """Summary rows of the `summaries_in_ingest` chunks before the window, the memory (most novel older
        chunks) dense, then the window dense."""
        records = self.store.records if records is None else records
        n = len(records)
        first = self._first(n)
        parts = []
        s = self.summaries_in_ingest
        if first and s != 0:
            lo = max(self.store.forgotten, 0 if s is None else first - s)
            parts.append(self.store.summary_rows(lo, max(lo, first)))
        chosen = [records[i] for i in self._memory(first)] + list(records[first:])
        parts += [kv for kv in (self.store.load(rec) for rec in chosen) if kv is not None]
        return parts

    def commit(self, view: Any, tokens: int, **kwargs: Any) -> None:
        sink_bytes = self.sink.nbytes if self.sink is not None else 0
        super().commit(view, tokens, **kwargs)
        if self.sink is not None and self.sink.nbytes != sink_bytes:
            self.store.pin(self.sink.nbytes - sink_bytes)
            self._update_stats()
        if not self._warm_checked and self.store.records:
            self._warm_answer_kernels()

    def _warm_answer_kernels(self) -> None:
        """The Triton kernels a question runs, compiled now, on the first chunk, not at the first question."""
        self._warm_checked = True
        if use_triton(self.device):
            layers, _, dim = self.layout
            queries = torch.zeros(layers, self._query_heads, 1, dim, dtype=self.dtype, device=self.device)
            self.stats.warmed = warm_answer_kernels(
                lambda: self._relevance(queries, len(self.store.records)), self.store.load(self.store.records[-1]),
                self.config.pool if getattr(self.config, "rest", None) == "pooled" else 0, self.config.tiers.cpu_bits,
            )  # fmt: skip

    def _keep(self, kv: torch.Tensor, pts_seconds: tuple[float, ...]) -> None:
        self.store.add(kv, pts_seconds)

    def _answer_bound(self, n: int) -> int:
        raise NotImplementedError

    def _update_stats(self) -> None:
        s, st = self.stats, self.store
        log = st.summaries
        counts = st.counts()
        n = len(st.records)
        s.chunks, s.chunks_dropped = n, st.dropped
        s.chunks_device, s.chunks_cpu, s.chunks_disk = counts["device"], counts["cpu"], counts["disk"]
        s.device_bytes = st.bytes["device"]  # the sink is pinned there
        s.cpu_bytes = st.bytes["cpu"] + (log.ram_bytes if log else 0)
        s.disk_bytes = st.bytes["disk"] + (log.disk_bytes if log else 0)
        s.summary_bytes = (log.ram_bytes + log.disk_bytes) if log else 0
        s.disk_error = st.disk_error
        s.bytes = s.device_bytes + s.cpu_bytes
        s.stored_tokens = self.sink_tokens + st.tokens
        s.tokens = self.sink_tokens + self._answer_bound(n)

    def snapshot(self) -> _Snapshot:
        with self.store.lock:
            return _Snapshot(self.sink, tuple(self.store.records))

    def within(self, snap: _Snapshot, start: float, end: float, allow_empty: bool = False) -> _Snapshot:
        """`snap` limited to the chunks with a frame in [start, end] stream seconds: the answer reads only those
        (and the sink) and selects among them as it would among all. No chunk there: `QuestionError`, or with
        `allow_empty` (a pending frame in range, not yet a chunk) a snapshot that reads none."""
        inside = [i for i, r in enumerate(snap.records) if any(start <= t <= end for t in r.pts_seconds)]
        if not inside and not allow_empty:
            raise QuestionError(f"no frame of the stream lies between {start:g}s and {end:g}s")
        return replace(snap, span=(inside[0], inside[-1] + 1) if inside else (0, 0))

    def span(self, snap: _Snapshot, start: float, end: float) -> tuple[int, float | None, float | None]:
        """(chunks, first frame time, last frame time) of the chunks `within(snap, start, end)` reads."""
        times = [r.pts_seconds for r in snap.records if any(start <= t <= end for t in r.pts_seconds)]
        return len(times), (min(times[0]) if times else None), (max(times[-1]) if times else None)

    def probe_view(self, snap: _Snapshot) -> ChunkView:
        """The ingestion view as of `snap`: what the question is run on to probe its queries."""
        parts = ([snap.sink] if snap.sink is not None else []) + self._ingest_context(snap.records)
        return ChunkView.gather(parts, self.num_layers)

    def select_layer(self) -> int:
        """One pass: the layer whose attention selects (the last scoring layer); the earlier ones read the
        ingestion view."""
        return layer_ids(self.config.score_layers, self.num_layers)[-1]

    def inline_selector(self, snap: _Snapshot) -> tuple[ChunkView, InlineSelect] | None:
        """With `one_pass`, the ingestion view and the selection the question makes inside its own forward at
        `select_layer()` (the same scores a probe forward gives); else None (the session probes first)."""
        if not self.config.one_pass:
            return None
        at = self.select_layer()

        def select(layer: int, queries: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
            if layer != at:
                return None
            some = queries[layer][0]
            q = torch.stack([queries[i][0] if i in queries else torch.zeros_like(some) for i in range(self.num_layers)])
            view = self.answer_view(snap, q.float(), first_layer=at)  # only the layers that read it are gathered
            return {i: (view.layers[i - at].keys, view.layers[i - at].values) for i in range(at, self.num_layers)}

        return self.probe_view(snap), select

    def _relevance(
        self, queries: torch.Tensor, stop: int, every_layer: bool = False, layer: int | None = None
    ) -> torch.Tensor:
        """(scoring layers, stop): attention mass each scoring layer's question query puts on chunks [0, stop)
        through their mean and representative keys (softmax over chunks per head, averaged over heads). With
        `layer`, `queries` are that one layer's (1, heads, q_len, dim) and it alone scores."""
        cfg = self.config
        ids = [layer] if layer is not None else layer_ids("all" if every_layer else cfg.score_layers, self.num_layers)
        contiguous = ids == list(range(ids[0], ids[-1] + 1))
        pick: slice | list[int] = slice(ids[0], ids[-1] + 1) if contiguous else ids  # a view, not a copy
        q = reduce_queries(queries, cfg.query)
        q = (q if layer is not None else q[pick]).float()
        logits = []
        forgotten = self.store.forgotten
        for lo in range(0, stop, SCORE_SPAN):
            hi = min(stop, lo + SCORE_SPAN)
            if hi <= forgotten:  # no index row left: never chosen, nothing to read
                logits.append(torch.full((*q.shape[:1], self.layout[1], q.shape[1] // self.layout[1], hi - lo),
                                         float("-inf"), device=q.device))  # fmt: skip
                continue
            rows = self.store.index_rows(lo, hi, pick) if contiguous else self.store.index_rows(lo, hi)[pick]
            logits.append(chunk_relevance(q, rows, self.layout[1], self.store.key_reps))
        out = torch.cat(logits, -1)
        out[..., :forgotten] = float("-inf")
        return out.softmax(-1).mean((1, 2))

    def _summaries_of(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """Summary rows of the given chunks as one-token KV (layers, 2, kv_heads, 1, head_dim)."""
        out: dict[int, torch.Tensor] = {}
        by_block: dict[int, list[int]] = {}
        for i in indices:
            by_block.setdefault(i // SUMMARY_BLOCK, []).append(i)
        for block, members in by_block.items():
            lo = block * SUMMARY_BLOCK
            rows = self.store.summary_rows(lo, lo + SUMMARY_BLOCK)
            out.update({i: rows[:, :, :, i - lo : i - lo + 1] for i in members})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "store": self.store.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.store.load_state(state["store"])
        self._update_stats()  # the bytes the store holds now (an index's open block loads at its used rows)

    def close(self) -> None:
        super().close()
        self.store.close()


class RetrievalKV(_TieredKV):
    """ReKV-like: sliding-window ingestion; per layer, a question reads its top_k older chunks + the window."""

    name = "retrieval"

    def __init__(self, layout: KVLayout, config: RetrievalConfig | None = None) -> None:
        super().__init__(layout, config or RetrievalConfig())

    def _answer_bound(self, n: int) -> int:
        window, top_k = self.config.window, self.config.top_k
        memory = 0 if self.config.per_layer else self.config.memory  # per layer: answers read no memory
        held = n if window is None or top_k is None else min(n, window + top_k + memory)
        return held * self.chunk_tokens

    def inline_selector(self, snap: _Snapshot) -> tuple[ChunkView, InlineSelect] | None:
        """Per layer (`per_layer` and `one_pass`): each layer picks its own top_k chunks by its own query when
        the forward reaches it (ReKV's in-model retrieval; earlier layers have read their own picks), so no probe
        forward; one choice for every layer: as `bilevel`."""
        if not (self.config.one_pass and self.config.per_layer):
            return super().inline_selector(snap)
        n = len(snap.records)
        first = self._first(n)
        older = snap.records[:first]
        in_window = snap.allowed(first, n)
        window = [kv for kv in (self.store.load(snap.records[i]) for i in in_window) if kv is not None]
        held = None  # which older chunks may be read dense (None: all of them, nothing was dropped or left out)
        usable = snap.allowed(0, first)
        if len(usable) < first or any(rec.tier == "dropped" or not rec.tokens for rec in older):
            held = torch.tensor([i in usable and rec.tier != "dropped" and rec.tokens > 0 for i, rec in enumerate(older)])
        older = older if usable else ()
        k = len(usable) if self.config.top_k is None else min(self.config.top_k, len(usable))
        loaded: dict[int, torch.Tensor | None] = {}
        dense: set[int] = set(in_window)
        scores: list[torch.Tensor] = []
        spent, longest = [0.0], [0]

        def select(layer: int, queries: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
            t0 = time.perf_counter()
            parts = [snap.sink[layer]] if snap.sink is not None else []
            if older:
                rel = self._relevance(queries[layer][0][None], first, layer=layer)[0]
                scores.append(rel)
                ranked = rel.argsort(descending=True)
                top = (ranked if held is None else ranked[held[ranked]])[:k].tolist()
                for i in sorted(top):
                    if i not in loaded:
                        loaded[i] = self.store.load(older[i])
                    if loaded[i] is not None:
                        parts.append(loaded[i][layer])  # type: ignore[index]
                dense.update(top)
            parts += [kv[layer] for kv in window]
            past = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
            longest[0] = max(longest[0], int(past.shape[2]))
            spent[0] += time.perf_counter() - t0
            if layer == self.num_layers - 1:
                mean = torch.stack(scores).mean(0) if scores else None
                self._record_answer(sorted(dense), 0, mean, longest[0], time.perf_counter() - spent[0])
            return {layer: (past[0][None], past[1][None])}

        return self.probe_view(snap), select

    def answer_view(self, snap: _Snapshot, queries: torch.Tensor | None, first_layer: int = 0) -> ChunkView:
        start = time.perf_counter()
        n = len(snap.records)
        first = self._first(n)
        older = snap.records[:first]
        usable = snap.allowed(0, first)
        choice: list[dict[int, int]] = [{} for _ in range(self.num_layers)]
        scores = None
        if usable:
            rel = self._relevance(_need(queries), first, every_layer=self.config.per_layer)
            scores = rel.mean(0)
            sizes = [0 if rec.tier == "dropped" or i not in usable else rec.tokens for i, rec in enumerate(older)]
            k = len(usable) if self.config.top_k is None else min(self.config.top_k, len(usable))
            if self.config.per_layer:
                order = rel.argsort(-1, descending=True).tolist()
                if snap.span is not None:
                    order = [[i for i in row if i in usable] for row in order]
            else:  # one choice for every layer: the top_k by the scoring layers' mean, then the memory
                memory = [i for i in self._memory(first) if i in usable]
                top = [i for i in scores.argsort(descending=True).tolist() if sizes[i]][:k]
                order = [top + [i for i in memory if i not in top]] * self.num_layers
                k += len(memory)
            budget = max(sum(sizes[i] for i in row[:k]) for row in order)
            for layer, row in enumerate(order):  # equal token counts across layers keep one mask valid
                left = budget
                for i in row:
                    if left <= 0:
                        break
                    if sizes[i]:
                        choice[layer][i] = min(sizes[i], left)
                        left -= choice[layer][i]
        loaded = {i: self.store.load(older[i]) for i in set().union(*choice)}
        in_window = snap.allowed(first, n)
        window = [kv for kv in (self.store.load(snap.records[i]) for i in in_window) if kv is not None]
        per_layer = []
        for layer in range(self.num_layers):
            parts = [snap.sink[layer]] if snap.sink is not None else []
            for i in sorted(choice[layer]):
                kv = loaded[i]
                if kv is not None:
                    parts.append(kv[layer, :, :, : choice[layer][i]])
            per_layer.append(parts + [kv[layer] for kv in window])
        per_layer = equal_lengths(per_layer)[first_layer:]
        view = ChunkView.gather_per_layer(per_layer, self.num_layers - first_layer)
        dense = {i for c in choice for i in c} | set(in_window)
        self._record_answer(dense, 0, scores, view.get_seq_length(), start)
        return view


def _need(queries: torch.Tensor | None) -> torch.Tensor:
    if queries is None:
        raise ValueError("a query-aware KV policy needs the question's queries; the session probes them when needs_queries is set")
    return queries


class BilevelKV(_TieredKV):
    """Video-XL-2-like: window + summary ingestion; a question reads its top_k chunks dense, others pooled."""

    name = "bilevel"

    def __init__(self, layout: KVLayout, config: BilevelConfig | None = None) -> None:
        super().__init__(layout, config or BilevelConfig())
        self.summaries_in_ingest = self.config.summaries

    def _rest_tokens(self) -> int:
        rest = self.config.rest
        return 0 if rest == "drop" else 1 if rest == "summary" else -(-self.chunk_tokens // self.config.pool)

    def _answer_bound(self, n: int) -> int:
        cfg = self.config
        k = n if cfg.top_k is None else min(cfg.top_k + cfg.memory, n)
        rest = n - k if cfg.rest_max is None else min(n - k, cfg.rest_max)
        return k * self.chunk_tokens + rest * self._rest_tokens()

    def answer_view(self, snap: _Snapshot, queries: torch.Tensor | None, first_layer: int = 0) -> ChunkView:
        """The question's view; `first_layer` > 0 gathers only layers from there on (a one-pass swap)."""
        start = time.perf_counter()
        cfg, n = self.config, len(snap.records)
        scores = self._relevance(_need(queries), n).mean(0) if n else None
        k = n if cfg.top_k is None else min(cfg.top_k, n)
        memory = [i for i in self._memory(self._first(n)) if i in snap.allowed(0, n)]
        read = n if cfg.rest != "drop" and cfg.rest_max is None else k + len(memory) + (cfg.rest_max or 0)
        order = ranked(scores, self.store.forgotten, read, snap.span)
        dense = set(order[:k]) | set(memory)  # relevant, then salient
        others = [i for i in order if i not in dense]
        rest = [] if cfg.rest == "drop" else others if cfg.rest_max is None else others[: cfg.rest_max]
        summaries = self._summaries_of(rest) if cfg.rest == "summary" else {}
        chosen: dict[int, torch.Tensor | None] = {}
        for i in dense.union(rest if cfg.rest == "pooled" else ()):
            chosen[i] = self.store.load(snap.records[i])
        pooled = pool_all({i: chosen[i] for i in rest if i in chosen}, cfg.pool)
        fallback = [i for i in dense.union(rest) if chosen.get(i) is None and i not in summaries]
        summaries.update(self._summaries_of(fallback))
        parts = [snap.sink] if snap.sink is not None else []
        for i in sorted(dense.union(rest)):  # chronological, like the stream
            kv = chosen.get(i) if i in dense else pooled.get(i)
            parts.append(kv if kv is not None else summaries[i])
        view = ChunkView.gather([p[first_layer:] for p in parts], self.num_layers - first_layer)
        read_dense = [i for i in dense if chosen.get(i) is not None]  # a dropped chunk was read as its summary
        self._record_answer(read_dense, len(rest) + len(dense) - len(read_dense), scores, view.get_seq_length(), start)
        return view
