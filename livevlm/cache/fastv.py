"""`fastv` (FastV-style): at question time, keep the stored visual tokens the question attends to most.

FastV ("An Image is Worth 1/2 Tokens After Layer 2", Chen et al., ECCV 2024) ranks image tokens by the
attention the text gives them in an early layer K (K = 2) and drops the lowest-ranked R% (50 %) for the
layers after K. On a stream the visual tokens are already stored as KV, so the ranking runs on the store:

    ingest   every chunk kept dense (as `full`); a new chunk attends to all of them
    probe    the session runs the question once on the full context (`probe_view`) and reads each layer's
             mean question query (the query-aware path `retrieval` and `bilevel` use)
    rank     layer `layer`: softmax over the whole context (system prompt and every visual token) of the
             mean query against each stored key (GQA-grouped), averaged over heads, per visual token
    keep     the top `keep_ratio` of the visual tokens (ties to the earlier token), in stream order, for
             EVERY layer, after the system prompt (the sink); the store itself is untouched

Adapted: FastV keeps all tokens in layers <= K and prunes only above; a view here has one token set for all
layers (transformers builds one mask per forward), so the selection applies from layer 0, and the ranking
uses the question's mean query (what the probe provides) rather than each text token's attention. Query-
aware, so unlike the pruners it cannot run at ingestion: it only shortens what a question attends to
(prefill of the question and decode), not what is stored. keep_ratio 1.0 answers on the full context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels.similarity import top_k
from ..records import KVLayout
from .chunked import ChunkedKV
from .view import ChunkView


@dataclass
class FastVConfig:
    """Query-time ranking of the stored visual KV by the question's attention in an early layer."""

    policy: str = "fastv"
    keep_ratio: float = 0.5
    """Share of the stored visual tokens a question attends to (FastV's 1 - R); 1.0: all of them."""
    layer: int = 2
    """The early LLM layer whose attention ranks the tokens (FastV's K; the last layer if the model has fewer)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"FastVConfig.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if not (isinstance(self.layer, int) and self.layer >= 0):
            raise ConfigError(f"FastVConfig.layer must be an int >= 0, got {self.layer!r}")


@dataclass(frozen=True)
class _Snapshot:
    sink: torch.Tensor | None
    chunks: tuple[torch.Tensor, ...]


def fastv_scores(queries: torch.Tensor, keys: torch.Tensor, n_sink: int) -> torch.Tensor:
    """(T,) attention of the mean query over the context, per token after the first `n_sink`, head mean.

    queries: (heads, dim) of one layer; keys: (kv_heads, n_sink + T, dim)."""
    kv_heads, _, dim = keys.shape
    q = queries.float().reshape(kv_heads, -1, dim)  # GQA: query heads grouped by their kv head
    logits = torch.einsum("kgd,knd->kgn", q, keys.float()) * dim**-0.5
    return torch.softmax(logits, dim=-1).mean((0, 1))[n_sink:]


class FastVKV(ChunkedKV):
    """Every chunk kept dense; a question reads the sink and its top `keep_ratio` visual tokens."""

    name = "fastv"
    needs_queries = True

    def __init__(self, layout: KVLayout, config: FastVConfig | None = None) -> None:
        super().__init__(layout, config or FastVConfig())
        self._chunks: list[torch.Tensor] = []

    def _ingest_context(self) -> list[torch.Tensor]:
        return list(self._chunks)

    def _keep(self, kv: torch.Tensor, pts_seconds: tuple[float, ...]) -> None:
        self._chunks.append(kv)

    def _update_stats(self) -> None:
        s = self.stats
        s.tokens = s.stored_tokens = self.sink_tokens + sum(int(kv.shape[3]) for kv in self._chunks)
        s.bytes = s.device_bytes = sum(kv.nbytes for kv in self._chunks) + (
            self.sink.nbytes if self.sink is not None else 0
        )
        s.chunks = s.chunks_device = len(self._chunks)

    def snapshot(self) -> _Snapshot:
        return _Snapshot(self.sink, tuple(self._chunks))

    def _parts(self, snapshot: _Snapshot, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return ([snapshot.sink] if snapshot.sink is not None else []) + list(chunks)

    def probe_view(self, snapshot: _Snapshot) -> ChunkView:
        return ChunkView.gather(self._parts(snapshot, snapshot.chunks), self.num_layers)

    def answer_view(self, snapshot: _Snapshot, queries: Any) -> ChunkView:
        start = time.perf_counter()
        chunks = [kv for kv in snapshot.chunks if kv.shape[3]]
        kept: Sequence[torch.Tensor] = chunks
        if chunks and queries is not None and self.config.keep_ratio < 1.0:
            visual = torch.cat(chunks, 3)  # (layers, 2, kv_heads, T, dim)
            layer = min(self.config.layer, self.num_layers - 1)
            keys = visual[layer, 0]
            n_sink = 0
            if snapshot.sink is not None:
                n_sink = int(snapshot.sink.shape[3])
                keys = torch.cat([snapshot.sink[layer, 0], keys], 1)
            scores = fastv_scores(queries[layer].float().mean(-2), keys, n_sink)  # the question's mean query
            n = int(visual.shape[3])
            keep = top_k(scores, max(1, math.floor(self.config.keep_ratio * n + 1e-9)))
            kept = [visual.index_select(3, keep.to(visual.device))]
        view = ChunkView.gather(self._parts(snapshot, kept), self.num_layers)
        self._record_answer(range(len(snapshot.chunks)), 0, None, view.get_seq_length(), start)
        return view

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "chunks": list(self._chunks)}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._chunks = [kv.to(self.device) for kv in state["chunks"]]

    def close(self) -> None:
        super().close()
        self._chunks.clear()
