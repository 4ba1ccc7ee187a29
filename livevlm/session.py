"""`Session`: one stream, one model, the loop.

push(frame) ─► pending (one temporal patch = 2 frames) ─► step():
    1. encode  (ViT, through the per-stream feature cache) ─► VisualChunk(embeds, (t,h,w) positions)
    2. prune   (strategy keeps the salient tokens, original positions kept)
    3. prefill the kept tokens into the stream's KV context
ask(question) ─► snapshot of the KV ─► [pending odd frame, padded] + question tokens at the positions
              after the video ─► greedy decode on the snapshot ─► yields text; the stream is untouched
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import KVStats, available_kv_policies, build_kv_store, kv_config
from .cache.vit_cache import build_feature_cache
from .errors import ConfigError, ContextOverflowError, FrameError, QuestionError
from .models import ChunkPlace, VideoLMAdapter, VisualChunk, load_model
from .models.qwen_vl import DEFAULT_SYSTEM_PROMPT
from .prune import PruneStats, build_pruner
from .stream import Frame

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class SessionConfig:
    """How a session loads its model, samples its stream and compresses what it keeps."""

    model: str | None = None
    """Local path or hub id of a supported checkpoint; None = the bundled default model."""
    device: str = "cpu"
    dtype: str = "auto"
    """auto (the checkpoint's), float32, bfloat16 or float16."""
    fps: float = 2.0
    """Frames per second sampled from files, and the time base of the temporal positions."""
    max_frames: int | None = None
    """Stop ingesting a file after this many sampled frames."""
    max_new_tokens: int = 64
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_pixels: int | None = None
    """Cap on pixels per frame after resizing (None: the checkpoint's video processor config, else 768 x 28 x 28)."""
    min_pixels: int | None = None
    """Floor on pixels per frame after resizing (None: the checkpoint's video processor config, else 128 x 28 x 28)."""
    vit_cache: Any = "none"
    """ViT feature cache: a preset name or a config from `livevlm.cache.vit_cache` ("none" = full encode)."""
    prune: Any = "none"
    """Token pruner: a strategy name or a config from `livevlm.prune` ("none" = keep every token)."""
    kv: Any = "full"
    """KV policy: a name or a config from `livevlm.cache` ("full" = every token kept, unbounded)."""
    kv_budget: int | str | None = None
    """Bytes of KV a bounded policy keeps in memory (e.g. 268435456, '256M'; retrieval/bilevel: 1/4 on the
    device, 3/4 in host RAM, older chunks spill to disk); None = the policy config's own tiers."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1 or None, got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_pixels is not None and self.max_pixels < 28 * 28:
            raise ConfigError(f"max_pixels must be >= 784, got {self.max_pixels}")
        if self.min_pixels is not None and not 28 * 28 <= self.min_pixels <= (self.max_pixels or 2**62):
            raise ConfigError(f"min_pixels must be in [784, max_pixels], got {self.min_pixels}")
        build_pruner(self.prune)  # an unknown strategy or a bad budget is refused here
        kv_name = self.kv if isinstance(self.kv, str) else getattr(self.kv, "policy", None)
        if kv_name not in available_kv_policies():
            raise ConfigError(
                f"unknown KV policy {kv_name!r}; choose one of {', '.join(available_kv_policies())}"
            )
        kv_config(self.kv, self.kv_budget)  # a budget for `full` or an unreadable size is refused here


@dataclass
class StageSeconds:
    """Wall time spent per stage since the session started."""

    vit: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0


@dataclass
class SessionStats:
    """What the loop has done so far; each compression stage adds its own record."""

    frames_seen: int = 0
    frames_rejected: int = 0
    chunks: int = 0
    visual_tokens: int = 0
    """Visual tokens the encoder produced (before pruning)."""
    kv_tokens: int = 0
    kv_bytes: int = 0
    questions: int = 0
    answer_tokens: int = 0
    last_pts_seconds: float | None = None
    seconds: StageSeconds = field(default_factory=StageSeconds)
    prune: PruneStats = field(default_factory=PruneStats)
    vit_cache: Any = None
    """The feature cache's stats record (None when the cache is off)."""
    kv: KVStats = field(default_factory=KVStats)
    """The KV policy's stats record (tokens, bytes, and what the policy adds)."""
    stream: Any = None
    """The watched source's `IngestStats` (frames in, dropped, corrupt, reconnects, gaps); None if not watching."""


class Session:
    """Watches one stream with one model; `ask()` answers over everything ingested so far. Thread-safe."""

    def __init__(
        self, model: str | Path | VideoLMAdapter | None = None, config: SessionConfig | None = None
    ) -> None:
        config = config or SessionConfig()
        if model is not None and not isinstance(model, (str, Path)):
            self.adapter: VideoLMAdapter = model
        else:
            config = replace(config, model=str(model)) if model is not None else config
            self.adapter = load_model(config.model, device=config.device, dtype=config.dtype)
        self.config = config
        self._lock = threading.RLock()
        self._kv = build_kv_store(kv_config(config.kv, config.kv_budget), self.adapter)
        self._feature_cache = build_feature_cache(config.vit_cache, self.adapter)
        prune = config.prune
        if not isinstance(prune, str) and hasattr(prune, "fps"):
            prune = replace(prune, fps=config.fps)  # per-second budgets fall back to the stream's rate
        self._pruner = build_pruner(prune)
        self._pending: list[Frame] = []
        self._frame_shape: tuple[int, int] | None = None
        self._size: tuple[int, int] | None = None
        self._grid_hw: tuple[int, int] = (0, 0)
        self._max_position = -1
        self._stats = SessionStats()
        self._ingestor: Any = None
        self._place0 = ChunkPlace(0, 0, self.adapter.frames_per_chunk / config.fps)
        self._start_prompt()

    # -- ingestion ------------------------------------------------------------------------------------
    def push(self, frame: Frame | np.ndarray, pts_seconds: float | None = None) -> VisualChunk | None:
        """Add one RGB uint8 (H, W, 3) frame; returns the (pruned) chunk it completed, if any."""
        with self._lock:
            try:
                frame = self._as_frame(frame, pts_seconds)
            except FrameError:
                self._stats.frames_rejected += 1
                raise
            self._pending.append(frame)
            self._stats.frames_seen += 1
            self._stats.last_pts_seconds = frame.pts_seconds
            return self.step() if len(self._pending) == self.adapter.frames_per_chunk else None

    def step(self) -> VisualChunk:
        """Encode the pending temporal patch, prune it and append the kept tokens to the KV context."""
        with self._lock:
            frames, self._pending = self._pending, []  # a failed encode must not leave a stuck, overfull patch
            chunk = self._encode(frames, self._stats.chunks, self._feature_cache)  # 1. encode
            self._max_position = max(self._max_position, int(chunk.positions.max()))
            kept = self._pruner(chunk)  # 2. prune
            start = time.perf_counter()
            if kept.num_tokens:  # 3. prefill into the KV store
                self._kv.append(self.adapter, kept.embeds, kept.positions, pts_seconds=chunk.pts_seconds)
            s = self._stats
            s.seconds.prefill += time.perf_counter() - start
            s.chunks += 1
            s.visual_tokens += chunk.num_tokens
            s.kv_tokens, s.kv_bytes = self._kv.stats.tokens, self._kv.stats.bytes
            return kept

    def ingest(self, source: str | Path | Iterable[Frame], progress: bool = False) -> int:
        """Push every frame of a video file (sampled at `config.fps`) or an iterable of frames."""
        from tqdm.auto import tqdm

        from .stream import FileSource, FileSourceConfig, probe

        total = None
        if isinstance(source, (str, Path)):
            cfg = FileSourceConfig(str(source), fps=self.config.fps, max_frames=self.config.max_frames)
            frames_iter: Iterable[Frame] = FileSource(cfg)
            if progress:
                total = _expected_frames(probe(source).duration_seconds, self.config)
        else:
            frames_iter = source
        count = 0
        try:
            with tqdm(total=total, unit="frame", desc="ingest", disable=not progress, leave=False) as bar:
                for frame in frames_iter:
                    self.push(frame)
                    count += 1
                    bar.update(1)
        finally:
            if hasattr(frames_iter, "close"):
                frames_iter.close()
        return count

    def watch(self, source: Any, reader: Any = None) -> Any:
        """Ingest a live source (URL, 'webcam:0', 'lavfi:...', file, config, Source) on a background thread.

        Returns the running `livevlm.stream.Ingestor` (`stop()`, `wait()`, `stats`); `ask()` keeps working.
        """
        from .stream import Ingestor, open_source

        ingestor = Ingestor(open_source(source, fps=self.config.fps), self.push, reader).start()
        with self._lock:
            self._ingestor = ingestor
        return ingestor

    # -- questions ------------------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int | None = None) -> Iterator[str]:
        """Stream the answer's text over the context so far; the stream context is left unchanged."""
        ids: list[int] = []
        emitted = ""
        for token in self.ask_ids(question, max_new_tokens):
            ids.append(token)
            text = self.adapter.decode_text(ids)
            if text.endswith("\ufffd"):  # an unfinished multi-byte character
                continue
            if len(text) > len(emitted):
                yield text[len(emitted) :]
                emitted = text

    def ask_ids(self, question: str, max_new_tokens: int | None = None) -> Iterator[int]:
        """Greedy token ids of the answer (the end-of-turn token included when reached)."""
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("the question must be a non-empty string")
        budget = max_new_tokens or self.config.max_new_tokens
        with self._lock:  # a consistent snapshot: ingestion may go on while we answer
            suffix = self.adapter.suffix_ids(question)
            extra = self.adapter.tokens_per_chunk(self._size) if self._pending else 0
            needed = self._kv.stats.tokens + extra + len(suffix) + budget
            if needed > self.adapter.max_context:
                raise ContextOverflowError(
                    f"context of {self._kv.stats.tokens + extra} stream tokens + {len(suffix)} question tokens + "
                    f"{budget} answer tokens exceeds the model's {self.adapter.max_context}"
                )
            snapshot, chunks, max_pos = self._kv.snapshot(), self._stats.chunks, self._max_position
            pending = list(self._pending)
            self._stats.questions += 1
        return self._answer(snapshot, pending, chunks, max_pos, suffix, budget)

    def _answer(
        self, snapshot: Any, pending: list[Frame], chunks: int, max_pos: int, suffix: list[int], budget: int
    ) -> Iterator[int]:
        cache = self._kv.answer_cache(snapshot, self.adapter, suffix)  # query-time KV selection
        if pending:  # a half-filled temporal patch: padded like the HF processor does, not pruned
            chunk = self._encode(pending, chunks, None)
            self.adapter.forward(chunk.embeds, chunk.positions, cache)
            chunks, max_pos = chunks + 1, max(max_pos, int(chunk.positions.max()))
        start = self.adapter.text_start_after_video(self._place0, chunks, self._grid_hw)
        positions = torch.arange(start, start + len(suffix)).expand(3, -1)
        t0 = time.perf_counter()
        logits = self.adapter.forward(self.adapter.embed_ids(suffix), positions, cache)
        prefill = time.perf_counter() - t0
        next_pos = max(max_pos, start + len(suffix) - 1) + 1
        produced, t0 = 0, time.perf_counter()
        try:
            for _ in range(budget):
                token = int(torch.argmax(logits))
                produced += 1
                yield token
                if token in self.adapter.eos_token_ids:
                    break
                pos = torch.full((3, 1), next_pos, dtype=torch.long)
                logits = self.adapter.forward(self.adapter.embed_ids([token]), pos, cache)
                next_pos += 1
        finally:
            with self._lock:
                self._stats.answer_tokens += produced
                self._stats.seconds.prefill += prefill
                self._stats.seconds.decode += time.perf_counter() - t0

    def close(self) -> None:
        """Stop a watched source and release the KV store (a disk tier's files are deleted); the session is done."""
        if self._ingestor is not None:
            self._ingestor.stop()
        with self._lock:
            self._kv.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------------
    @property
    def stats(self) -> SessionStats:
        """A copy of the counters, safe to keep."""
        stream = self._ingestor.stats if self._ingestor is not None else None
        with self._lock:
            s = self._stats
            vit = getattr(self._feature_cache, "stats", None)
            return replace(
                s,
                seconds=replace(s.seconds),
                prune=replace(self._pruner.stats),
                vit_cache=replace(vit) if vit is not None else None,
                kv=replace(self._kv.stats),
                stream=stream,
            )

    def _start_prompt(self) -> None:
        ids = self.adapter.prefix_ids(self.config.system_prompt)
        positions = torch.arange(len(ids)).expand(3, -1)
        self._kv.append(self.adapter, self.adapter.embed_ids(ids), positions, is_prompt=True)
        self._max_position = len(ids) - 1
        self._place0 = ChunkPlace(0, len(ids), self._place0.seconds_per_chunk)
        self._stats.kv_tokens, self._stats.kv_bytes = self._kv.stats.tokens, self._kv.stats.bytes

    def _encode(self, frames: list[Frame], index: int, feature_cache: Any) -> VisualChunk:
        batch = np.stack([f.data for f in frames])
        if len(frames) < self.adapter.frames_per_chunk:
            pad = self.adapter.frames_per_chunk - len(frames)
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        place = replace(self._place0, index=index)
        chunk = self.adapter.encode(batch, self._size, place, feature_cache=feature_cache)
        chunk.pts_seconds = tuple(f.pts_seconds for f in frames)
        with self._lock:
            self._grid_hw = chunk.grid_thw[1:]
            self._stats.seconds.vit += chunk.encode_seconds
        return chunk

    def _as_frame(self, frame: Frame | np.ndarray, pts_seconds: float | None) -> Frame:
        if pts_seconds is None:
            pts_seconds = (
                frame.pts_seconds if isinstance(frame, Frame) else self._stats.frames_seen / self.config.fps
            )
        frame = Frame(frame.data if isinstance(frame, Frame) else frame, float(pts_seconds))
        if self._frame_shape is None:
            self._frame_shape = (frame.height, frame.width)
            self._size = self.adapter.target_size(
                frame.height,
                frame.width,
                min_pixels=self.config.min_pixels,
                max_pixels=self.config.max_pixels,
            )
        elif (frame.height, frame.width) != self._frame_shape:
            frame = Frame(_resize_uint8(frame.data, self._frame_shape), frame.pts_seconds, frame.source_id)
        return frame


def _expected_frames(duration: float | None, config: SessionConfig) -> int | None:
    """How many frames sampling a file of `duration` seconds will give (for the progress bar)."""
    if duration is None:
        return config.max_frames
    n = max(1, int(np.ceil(duration * config.fps)))
    return min(n, config.max_frames) if config.max_frames else n


def _resize_uint8(data: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to the stream's first frame size (a camera changed resolution)."""
    x = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
