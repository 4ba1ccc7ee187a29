"""Chunked KV stores: the sink, bounded-cost chunked prefill on gathered views, and the `sink_window` policy.

    ingest_view() ─► ChunkView(sink | context) ─► [session: forward(chunk)] ─► commit(view) ─► keep (policy)
    ask ─► snapshot ─► answer_view: ChunkView(sink | what the policy selects) ─► session prefills + decodes

A new chunk attends only to what its policy gathers (real sparsity: the attention runs over the gathered
tokens, not a mask over everything), so ingest cost is flat once the context is full. Keys are stored rotated
at their absolute positions; questions and new chunks are placed at their true positions, so gathered keys
need no re-rotation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..records import KVLayout, load_fields
from .kv_configs import ChunkedKVStats, SinkWindowConfig
from .view import ChunkView

logger = logging.getLogger(__name__)


class ChunkedKV:
    """Shared machinery: the sink (system prompt), ingestion on a gathered view, stats."""

    name = ""
    needs_queries = False

    def __init__(self, layout: KVLayout, config: Any) -> None:
        self.config = config
        self.layout = layout.shape3
        self.num_layers = layout.layers
        self.device, self.dtype = layout.device, layout.dtype
        self.sink: torch.Tensor | None = None
        self.chunk_tokens = 0  # the largest chunk so far (for context bounds)
        self.stats = ChunkedKVStats()

    # -- ingestion ------------------------------------------------------------------------------------
    def ingest_view(self) -> ChunkView:
        """Sink + what the policy lets a new chunk attend to."""
        return ChunkView.gather(self._with_sink(self._ingest_context()), self.num_layers)

    def commit(
        self, view: Any, tokens: int, *, is_prompt: bool = False, pts_seconds: Sequence[float] = ()
    ) -> None:
        kv = view.tail(tokens)
        if is_prompt:
            self.sink = kv if self.sink is None else torch.cat([self.sink, kv], 3)
        else:
            self.chunk_tokens = max(self.chunk_tokens, int(kv.shape[3]))
            self._keep(kv, tuple(pts_seconds))
            self.stats.ingest_context_tokens = view.get_seq_length() - tokens
        self._update_stats()

    def _with_sink(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return ([self.sink] if self.sink is not None else []) + list(parts)

    @property
    def sink_tokens(self) -> int:
        return int(self.sink.shape[3]) if self.sink is not None else 0

    def _ingest_context(self) -> list[torch.Tensor]:
        """What a new chunk attends to besides the sink."""
        raise NotImplementedError

    def _keep(self, kv: torch.Tensor, pts_seconds: tuple[float, ...]) -> None:
        raise NotImplementedError

    def _update_stats(self) -> None:
        raise NotImplementedError

    def _record_answer(self, dense: Sequence[int], pooled: int, scores: Any, context: int, start: float) -> None:
        s = self.stats
        s.last_dense, s.last_pooled, s.last_context_tokens = tuple(sorted(dense)), pooled, context
        s.last_scores = tuple(scores.tolist()) if scores is not None else ()
        s.last_select_seconds = time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        """The sink, the largest chunk size and the stats; subclasses add where their chunks are."""
        return {"sink": self.sink, "chunk_tokens": self.chunk_tokens, "stats": dataclasses.asdict(self.stats)}

    def load_state(self, state: dict[str, Any]) -> None:
        sink = state["sink"]
        self.sink = sink.to(self.device) if sink is not None else None
        self.chunk_tokens = int(state["chunk_tokens"])
        load_fields(self.stats, state["stats"])

    def close(self) -> None:
        self.sink = None


@dataclass(frozen=True)
class _WindowSnapshot:
    sink: torch.Tensor | None
    window: tuple[torch.Tensor, ...]
    indices: tuple[int, ...]


class SinkWindowKV(ChunkedKV):
    """StreamingVLM-like: sink + the newest `window` chunks (bounded by `tiers.device_bytes`); older dropped.

    Positions stay absolute (no re-compaction): RoPE sees the true distances inside the window."""

    name = "sink_window"

    def __init__(self, layout: KVLayout, config: SinkWindowConfig | None = None) -> None:
        super().__init__(layout, config or SinkWindowConfig())
        self._window: deque[tuple[int, torch.Tensor]] = deque()
        self._count = 0
        self._warned_over_budget = False

    def _ingest_context(self) -> list[torch.Tensor]:
        return [kv for _, kv in self._window]

    def _keep(self, kv: torch.Tensor, pts_seconds: tuple[float, ...]) -> None:
        self._window.append((self._count, kv))
        self._count += 1
        limit, budget = self.config.window, self.config.tiers.device_bytes
        while self._window and limit is not None and len(self._window) > limit:
            self._window.popleft()
        while len(self._window) > 1 and budget is not None and self._bytes() > budget:
            self._window.popleft()
        if budget is not None and self._bytes() > budget and not self._warned_over_budget:
            self._warned_over_budget = True  # the newest chunk is kept anyway: a budget that holds none is a slip
            logger.warning(
                "the KV budget of %d bytes on the device holds no chunk of this stream (the newest takes %d with "
                "the prompt): it is kept anyway; a budget is in bytes (256M, 1G)", budget, self._bytes()
            )

    def _bytes(self) -> int:
        return sum(kv.nbytes for _, kv in self._window) + (self.sink.nbytes if self.sink is not None else 0)

    def _update_stats(self) -> None:
        s = self.stats
        tokens = self.sink_tokens + sum(int(kv.shape[3]) for _, kv in self._window)
        s.tokens = s.stored_tokens = tokens
        s.bytes = s.device_bytes = self._bytes()
        s.chunks, s.chunks_device = self._count, len(self._window)
        s.chunks_dropped = self._count - len(self._window)

    def snapshot(self) -> _WindowSnapshot:
        return _WindowSnapshot(
            self.sink, tuple(kv for _, kv in self._window), tuple(i for i, _ in self._window)
        )

    def probe_view(self, snapshot: _WindowSnapshot) -> ChunkView:
        return self.answer_view(snapshot, None)

    def answer_view(self, snapshot: _WindowSnapshot, queries: torch.Tensor | None) -> ChunkView:
        start = time.perf_counter()
        parts = ([snapshot.sink] if snapshot.sink is not None else []) + list(snapshot.window)
        view = ChunkView.gather(parts, self.num_layers)
        self._record_answer(snapshot.indices, 0, None, view.get_seq_length(), start)
        return view

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "window": [kv for _, kv in self._window],
            "indices": [i for i, _ in self._window],
            "count": self._count,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._window = deque((int(i), kv.to(self.device)) for i, kv in zip(state["indices"], state["window"]))
        self._count = int(state["count"])

    def close(self) -> None:
        super().close()
        self._window.clear()
