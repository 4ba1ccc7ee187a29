"""Configs of the KV policies and their stats records; `with_budget` is what `--kv-budget BYTES` means for each."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from .scoring import check_selection
from .tiers import KVTiers

REST_MODES = ("pooled", "summary", "drop")


@dataclass
class KVStats:
    """Size of the stream's cached context."""

    tokens: int = 0
    bytes: int = 0


@dataclass
class FullKVConfig:
    """The baseline: every token of the stream kept in one dense cache on the device (unbounded)."""

    policy: str = "full"


def _split_budget(tiers: KVTiers, total: int) -> KVTiers:
    """1/4 of `total` on the device, 3/4 in host RAM; bits and spill settings kept."""
    return replace(tiers, device_bytes=total // 4, cpu_bytes=total - total // 4, disk_bytes=tiers.disk_bytes)


def _check_count(owner: str, name: str, value: Any, minimum: int = 0) -> None:
    if value is not None and not (isinstance(value, int) and value >= minimum):
        raise ConfigError(f"{owner}.{name} must be an int >= {minimum} or None, got {value!r}")


@dataclass
class SinkWindowConfig:
    """StreamingVLM-like: the system prompt (the attention sink) and the newest chunks; older ones are dropped."""

    policy: str = "sink_window"
    window: int | None = 16
    """Chunks kept behind the sink; each new chunk and each question attend to exactly these. None = all."""
    tiers: KVTiers = field(default_factory=lambda: KVTiers(device_bytes=None))
    """Only `device_bytes` applies: the window shrinks to the newest chunks that fit in it."""

    def __post_init__(self) -> None:
        _check_count("SinkWindowConfig", "window", self.window, minimum=1)  # 0 would keep no video at all

    def with_budget(self, total: int) -> SinkWindowConfig:
        """All `total` bytes on the device: the window shrinks to the newest chunks that fit."""
        return replace(self, tiers=replace(self.tiers, device_bytes=total))


@dataclass
class SelectionConfig:
    """How a query-aware policy scores chunks for a question and which chunks stay dense (`scoring.py`)."""

    query: str = "last"
    """Question query that scores chunks: last = the answer position's (what the first answer token attends
    from), mean = the mean over the question's tokens (ReKV)."""
    key_reps: int = 8
    """Atypical keys kept per chunk besides its mean key (the keys farthest from it, per layer and head); a
    chunk scores the max over them (a small event hides in the mean). 0 = mean key only."""
    score_layers: str | tuple[int, ...] = "late"
    """Layers whose queries score chunks (one choice shared by all layers): late = the second half, all, or
    a tuple of layer indices."""
    memory: int = 8
    """Most novel older chunks (query-free: how much a chunk differs from the one before) kept dense in every
    new chunk's context and every answer, so counts and order survive past the window. 0 = none."""
    one_pass: bool = False
    """Select inside the question's own forward when it reaches the last scoring layer (layers before it read
    the ingestion view: sink, memory, window), instead of a probe forward first: one forward per question."""

    def _check_selection(self, owner: str) -> None:
        check_selection(owner, self.query, self.key_reps, self.score_layers, self.memory)


@dataclass
class RetrievalConfig(SelectionConfig):
    """ReKV-like: ingestion sees the sink, the memory (most novel older chunks) and the last `window` chunks;
    every chunk's KV is kept (offloaded down the tiers); a question reads the `top_k` older chunks most
    relevant to it (`SelectionConfig`), the memory and the window, all dense."""

    policy: str = "retrieval"
    window: int | None = 4
    """Newest chunks attended to in full, during ingestion and by every question. None = all (exact)."""
    top_k: int | None = 8
    """Older chunks each layer reads dense for a question (by relevance; equal token counts across layers,
    the last chunk cut if chunk sizes differ). None = all (exact)."""
    tiers: KVTiers = field(default_factory=KVTiers)
    """Byte budgets of the device / host / disk tiers."""

    per_layer: bool = True
    """Each layer picks its own top_k chunks by its own queries (ReKV; every layer scores, `score_layers` and
    the memory are not used in answers); False = one choice for all layers: the top_k by the scoring layers,
    plus the memory. Chosen on the yardstick's validation split (needle 0.90 vs 0.87, 0.21 vs 0.27 of the
    full context; `benchmarks/results/kv-selection-val.json`)."""
    one_pass: bool = True
    """Select inside the question's forward (per layer: each layer by its own query when the forward reaches
    it), no probe forward. Validation: needle 0.90 / count 0.87 vs 0.93 / 0.87 with the probe (False), at 0.69x
    its time to first token (`kv-one-pass-retrieval-val.json`)."""

    def __post_init__(self) -> None:
        _check_count("RetrievalConfig", "window", self.window)
        _check_count("RetrievalConfig", "top_k", self.top_k)
        self._check_selection("RetrievalConfig")

    def with_budget(self, total: int) -> RetrievalConfig:
        return replace(self, tiers=_split_budget(self.tiers, total))


@dataclass
class BilevelConfig(SelectionConfig):
    """Video-XL-2-like: ingestion sees the sink, the memory (most novel older chunks) and the last `window`
    chunks in full (and optionally `summaries` older chunks as one summary token each); a question scores
    every chunk inside the model (`SelectionConfig`), reads the `top_k` most relevant and the memory dense and
    the others pooled. `BilevelConfig(window=None, top_k=None)` is exactly the `full` baseline."""

    policy: str = "bilevel"
    window: int | None = 4
    """Previous chunks a new chunk attends to in full. None = all (exact, unbounded ingest cost)."""
    summaries: int | None = 0
    """Chunks before the window a new chunk sees through their summary token. None = all (cost grows). Off by
    default: on the yardstick's validation split they did not help counting (the memory does)."""
    top_k: int | None = 8
    """Chunks a question reads dense, by relevance. None = all (exact)."""
    rest: str = "pooled"
    """How a question reads the other chunks: pooled (`pool` tokens averaged into one), summary (one token
    per chunk), drop (not at all)."""
    pool: int = 4
    """Tokens averaged into one for rest='pooled' (Video-XL-2: 4)."""
    rest_max: int | None = 64
    """At most this many other chunks are read (pooled/summary), the most relevant first; the rest are
    dropped for this question. Keeps time-to-first-token flat in stream length. None = all."""
    tiers: KVTiers = field(default_factory=KVTiers)
    """Byte budgets of the device / host / disk tiers."""
    one_pass: bool = True
    """Select inside the question's forward at the last scoring layer (one forward per question; the layers
    before it read the ingestion view). On the yardstick's validation split: needle 0.90 / count 0.87 vs 0.93 /
    0.87 with a probe forward first (False), at 0.57x its time to first token (`kv-one-pass-val.json`)."""

    def __post_init__(self) -> None:
        for name in ("window", "summaries", "top_k", "rest_max"):
            _check_count("BilevelConfig", name, getattr(self, name))
        _check_count("BilevelConfig", "pool", self.pool, minimum=1)
        if self.rest not in REST_MODES:
            raise ConfigError(f"BilevelConfig.rest must be one of {', '.join(REST_MODES)}, got {self.rest!r}")
        self._check_selection("BilevelConfig")

    def with_budget(self, total: int) -> BilevelConfig:
        return replace(self, tiers=_split_budget(self.tiers, total))


@dataclass
class ChunkedKVStats(KVStats):
    """A chunked store: `tokens` = the most a question attends to, `bytes` = KV held in memory (device + host)."""

    stored_tokens: int = 0
    """Tokens whose dense KV is held in some tier (sink included)."""
    device_bytes: int = 0
    cpu_bytes: int = 0
    """Host bytes: offloaded chunks plus the summary index held in RAM."""
    disk_bytes: int = 0
    """Bytes in the spill file: chunks plus spilled summary blocks."""
    disk_error: str | None = None
    """Why the spill file stopped growing (a full disk, an unwritable spill_dir), if it did: it keeps that size
    from then on and the oldest chunks' KV makes room, as past `KVTiers.disk_bytes`."""
    summary_bytes: int = 0
    """Bytes of the per-chunk summary index (RAM and disk)."""
    chunks: int = 0
    chunks_device: int = 0
    chunks_cpu: int = 0
    chunks_disk: int = 0
    chunks_dropped: int = 0
    """Chunks whose dense KV is gone (out of the window, or past the disk budget)."""
    ingest_context_tokens: int = 0
    """Tokens the last chunk attended to besides itself: flat once the window is full."""
    last_dense: tuple[int, ...] = ()
    """Chunks (store order) the last question read dense; for `retrieval` those read by any layer."""
    last_pooled: int = 0
    """Chunks the last question read pooled or as a summary token."""
    last_scores: tuple[float, ...] = ()
    """Relevance of every scored chunk to the last question (attention mass, mean over layers and heads)."""
    last_context_tokens: int = 0
    """Tokens of the context the last question was answered on (before the question itself)."""
    last_select_seconds: float = 0.0
    warmed: tuple[str, ...] = ()
    """Triton kernels a question runs that were compiled at the first chunk (relevance, pool), so the first
    question does not compile them (CUDA with triton, or LIVEVLM_KERNELS=triton)."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """'1073741824', '512M', '1.5GiB' -> bytes (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"not a byte size: {text!r} (examples: 268435456, 256M, 1.5G)")
    return int(float(match.group(1)) * 1024 ** "_kmgt".index((match.group(2) or "_").lower()))
