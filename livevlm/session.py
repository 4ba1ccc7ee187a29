"""`Session`: one stream, one model, the loop. Every model call starts here (the ViT cache runs only the
vision encoder it is handed); stores only store.

push(frame) ─► pending (one temporal patch = 2 frames) ─► step():
    0. admit    the pruner may refuse a near-duplicate patch before the ViT (dedup): nothing encoded or stored
    1. encode   adapter.preprocess ─► ViT cache (wraps the model's vision encoder) ─► embeds
                adapter.video_positions ─► VisualChunk(embeds, (t, h, w) positions, [text around it])
    2. prune    the strategy keeps the salient tokens at their original positions
    3. forward  adapter.extend(kept tokens) on kv.ingest_view(): what the policy lets a chunk attend to
                (prefill static / graph: on fixed-size buffers, `models.static_prefill`, appended to the view)
    4. commit   kv.commit(view): the store keeps the chunk's KV (tiers, summaries, window)
ask(question) ─► [no frame yet: wait for a watched source's first, else NoVideoError] ─► kv.snapshot()
    ─► [probe: adapter.question_queries on kv.probe_view(snapshot)] ─► kv.answer_view (one-pass policies:
    selected inside the question's forward) ─► prefill [pending frame] + question ─► decode ─► yields text;
    the stream context is untouched
The question side (`ask`, `choose`: prefill and decode) lives in `questions` and `generate`; `ingest`, `watch`
and the wait of a question asked before the first frame (`NoVideoError`) in `session_sources`; input checks in
`guards`, how an answer ends (end tokens, repetition settings, loops) in `answer_stop`, the up-front context
estimate in `context_fit`, standing queries (`watch_for`) in `standing`, snapshots (`save` / `Session.load`:
the whole stream state) in `session_snapshot`. After `close()` every method but `stats` raises.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import build_feature_cache, build_kv_store
from .context_fit import check_answer_budget, say_when_past_context
from .errors import ConfigError, FrameError, SessionClosedError
from .guards import check_pts
from .kernels import backend as kernel_backends
from .kernels.attention import model_attention
from .kernels.transfer import upload
from .models import ChunkPlace, VideoLMAdapter, VisualChunk, check_adapter, load_model
from .models.graphed_encode import EAGER_FOR_ATTENTION, GraphedEncode
from .models.static_decode import DecodeBuffers
from .models.static_prefill import ChunkPrefill
from .prune import build_pruner
from .questions import QuestionsMixin
from .records import ChunkText
from .session_config import SessionConfig, SessionStats, as_session_config
from .session_snapshot import SnapshotMixin
from .session_sources import SourcesMixin
from .stand_ins import StandIns
from .standing import StandingMixin, StandingQueries
from .stream import Frame
from .stream import config as _stream_config
from .stream.frame import accept_pixels, fit_size, resize_frame

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Session", "SessionConfig", "SessionStats"]


class Session(QuestionsMixin, SourcesMixin, StandingMixin, SnapshotMixin):
    """Watches one stream with one model; `ask()` answers over everything ingested so far. Thread-safe."""

    def __init__(
        self, model: str | Path | VideoLMAdapter | None = None, config: SessionConfig | None = None
    ) -> None:
        config = as_session_config(config)
        if model is not None and not isinstance(model, (str, Path)):
            adapter: VideoLMAdapter = check_adapter(model)
        else:
            config = replace(config, model=str(model)) if model is not None else config
            adapter = load_model(config.model, device=config.device, dtype=config.dtype)
        self._build(adapter, config)
        self._start_prompt()

    def _build(self, adapter: VideoLMAdapter, config: SessionConfig) -> None:
        """Everything but the system prompt's prefill (`load` restores the stream into what this builds)."""
        self.adapter = adapter
        self.config = config
        self._lock = threading.RLock()
        self._kv = build_kv_store(config.kv, self.adapter.kv_layout())
        if self._kv.needs_queries:
            self.adapter.enable_query_probe()  # refused here if the model's attention cannot be probed
        encoder = self.adapter.vision_encoder()
        self._graphed_encode = GraphedEncode(encoder.full) if config.encode == "graph" else None
        if self._graphed_encode is not None:
            encoder = replace(encoder, full=self._graphed_encode, graphed=True)
        self._encoder = encoder
        self._chunk_prefill = ChunkPrefill(adapter, config.prefill) if config.prefill != "eager" else None
        self._decoders = DecodeBuffers(adapter, config.decode == "graph") if config.decode != "dynamic" else None
        self._feature_cache = build_feature_cache(config.vit_cache, encoder)
        self._pruner = build_pruner(config.prune)
        self._vision_layers = self._attention_layers()
        self._pending: list[Frame] = []
        self._latest: Frame | None = None
        self._frame_shape: tuple[int, int] | None = None
        self._size: tuple[int, int] | None = None
        self._grid_hw: tuple[int, int] = (0, 0)
        self._no_tokens: torch.Tensor | None = None  # (0, D): the embeds of a patch skipped before the ViT
        self._max_position = -1  # the highest position of any visual token, kept or not
        self._stand_ins = StandIns()  # which stored chunk stands for frames that stored nothing (within=)
        self._stats = SessionStats()
        self._ingestor: Any = None
        self._feed: Any = None  # the PushSource behind push(block=False)
        self._chunk_done = threading.Condition(self._lock)
        self._closed = False
        self._standing = StandingQueries()  # watch_for's queries (standing.py)
        self._prompt_ids: list[int] = []
        self._place0 = ChunkPlace(0, 0, self.adapter.frames_per_chunk / config.fps)

    # -- ingestion ------------------------------------------------------------------------------------
    def push(
        self, frame: Frame | np.ndarray, pts_seconds: float | None = None, *, block: bool = True
    ) -> VisualChunk | None:
        """Add one RGB uint8 (H, W, 3) frame; returns the (pruned) chunk it completed, if any.

        `block=False` never waits for the model: the frame goes to a bounded buffer (8 frames, the oldest
        dropped first, as the live reader does) that a background thread ingests; drops show in
        `stats.stream` and the call returns None. Its `pts_seconds` default to seconds since the first such push.
        The thread holds the session until `close()` (use `with Session(...)`), so a dropped one is not freed.

        `pts_seconds` (None: the `Frame`'s own, or for an array the next 1/fps instant after the last frame) is
        seconds since the stream's start: a finite number in [0, 1e9], greater than the previous accepted
        frame's. Anything else (a string, NaN, inf, negative, a duplicate or backwards time) raises
        `FrameError` and is counted in `stats.frames_rejected`, like a malformed frame; the stream goes on.
        `ingest()` and `watch()` shift a source that starts before the stream's time (a second file, a restart)
        so it follows it."""
        if not block:
            self._feeder().push(frame, pts_seconds)
            return None
        with self._lock:
            self._check_open()
            try:
                frame = self._as_frame(frame, pts_seconds)
            except FrameError:
                self._stats.frames_rejected += 1
                raise
            self._pending.append(frame)
            self._latest = frame
            self._stats.frames_seen += 1
            self._stats.last_pts_seconds = frame.pts_seconds
            if self._stats.first_pts_seconds is None:
                self._stats.first_pts_seconds = frame.pts_seconds
            self._chunk_done.notify_all()  # a question waiting for the stream's first frame
            return self.step() if len(self._pending) == self.adapter.frames_per_chunk else None

    def step(self) -> VisualChunk:
        """Encode the pending temporal patch, prune it and append the kept tokens to the KV context."""
        with self._lock:
            self._check_open()
            frames, self._pending = self._pending, []  # a failed encode must not leave a stuck, overfull patch
            if not self._pruner.admit([f.data for f in frames]) and self._no_tokens is not None:
                return self._skip(frames, self._stats.chunks)  # 0. a near-duplicate patch: no ViT, no token
            chunk = self._encode(frames, self._stats.chunks, self._feature_cache, self._max_position + 1)  # 1.
            self._max_position = max(self._max_position, chunk.last_position)
            kept = self._pruner(chunk)  # 2. prune
            if kept.num_tokens:  # 3. forward on the store's view, 4. commit
                self._prefill(*kept.with_text(), pts_seconds=chunk.pts_seconds)
                self._stand_ins.stored(chunk.pts_seconds)
            else:
                self._stand_ins.skipped(chunk.pts_seconds)
            s = self._stats
            s.chunks += 1
            s.visual_tokens += chunk.num_tokens
            self._chunk_done.notify_all()
            return kept

    def _skip(self, frames: list[Frame], index: int) -> VisualChunk:
        """A patch the pruner refused before the encoder: its positions advance the stream, nothing is stored."""
        h, w = self._grid_hw
        on_host = self.adapter.video_positions(replace(self._place0, index=index, start=self._max_position + 1), h, w)
        self._max_position = max(self._max_position, int(on_host.max()))
        positions = upload(on_host, self.adapter.device)
        self._stand_ins.skipped(tuple(f.pts_seconds for f in frames))
        self._stats.chunks += 1
        self._chunk_done.notify_all()
        none = torch.zeros(0, dtype=torch.long, device=positions.device)
        return VisualChunk(self._no_tokens, positions[:, none], (1, h, w), tuple(f.pts_seconds for f in frames),
                           kept_index=none)  # fmt: skip

    def wait_for_chunk(self, after: int, timeout: float | None = None) -> int:
        """Wait until more than `after` chunks were ingested (or `timeout` seconds, or close); returns the
        number of chunks ingested so far. What standing queries wake on."""
        with self._chunk_done:
            self._chunk_done.wait_for(lambda: self._stats.chunks > after or self._closed, timeout)
            return self._stats.chunks

    def _prefill(self, embeds: torch.Tensor, positions: torch.Tensor, **commit: Any) -> None:
        """Run `embeds` at `positions` on the store's ingestion view and commit their KV to the stream."""
        start = time.perf_counter()
        view = self._kv.ingest_view()
        if self._chunk_prefill is not None and not commit.get("is_prompt"):
            path = self._chunk_prefill(embeds, positions, view)  # fixed shapes (a CUDA graph), appended to the view
            self._stats.prefills_by_path[path] = self._stats.prefills_by_path.get(path, 0) + 1
        else:
            self.adapter.extend(embeds, positions, view)
        self._kv.commit(view, int(embeds.shape[0]), **commit)
        s = self._stats
        s.seconds.prefill += time.perf_counter() - start
        say_when_past_context(s.kv_tokens, self._kv.stats.tokens, self.adapter.max_context, self._kv.name)
        s.kv_tokens, s.kv_bytes = self._kv.stats.tokens, self._kv.stats.bytes

    def close(self) -> None:
        """Stop a watched source and the standing queries, release the KV store (a disk tier's files are deleted).

        Afterwards every method but `stats` raises `SessionClosedError`, and so does the next token of an answer
        still being decoded (what it yielded stands). Closing twice is harmless."""
        if self._ingestor is not None:
            self._ingestor.stop()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._kv.close()
                for buffers in (self._decoders, self._chunk_prefill):
                    if buffers is not None:
                        buffers.clear()  # fixed-shape buffers and their CUDA graphs
            self._chunk_done.notify_all()
        self._standing.cancel_all()  # outside the lock: their threads wake on it

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("this session is closed (close() was called): start a new Session")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------------
    @property
    def latest_frame(self) -> Frame | None:
        """The last frame accepted (at the session's frame size): what a viewer of the stream shows."""
        return self._latest

    @property
    def stats(self) -> SessionStats:
        """A copy of the counters, safe to keep; still readable after `close()`."""
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
                pending_frames=len(self._pending),
                frames_rejected=s.frames_rejected + (self._feed.stats.frames_rejected if self._feed else 0),
                stream=stream,
                kernels={op: str(choice) for op, choice in self._kernels().items()},
                standing=self._standing.stats(),
                encodes_by_path=dict(self._graphed_encode.calls) if self._graphed_encode is not None else {},
                prefills_by_path=dict(s.prefills_by_path),
                answers_by_decode=dict(s.answers_by_decode),
            )

    def _kernels(self) -> dict[str, Any]:
        """The backend each kernel runs for this model; the ViT cache's linear reports what it really ran."""
        choices: dict[str, Any] = kernel_backends(self.adapter.dtype, str(self.adapter.device))
        runner = getattr(self._feature_cache, "runner", None)
        if runner is not None:
            choices["linear"] = runner.linear.choice
        return choices | model_attention(self.adapter.model)

    def _start_prompt(self) -> None:
        ids = self._prompt_ids = self.adapter.prefix_ids(self.config.system_prompt)
        check_answer_budget(self.adapter, len(ids), self.config.max_new_tokens)
        self._prefill(self.adapter.embed_ids(ids), self.adapter.text_positions(0, len(ids)), is_prompt=True)
        self._max_position = len(ids) - 1
        self._place0 = ChunkPlace(0, len(ids), self._place0.seconds_per_chunk)
        self._stats.seconds.prefill = 0.0  # the system prompt is set-up, not stream work

    def _encode(self, frames: list[Frame], index: int, feature_cache: Any, first: int) -> VisualChunk:
        """Encode one temporal patch as chunk `index`, its text (if the family has any) from position `first`."""
        batch = np.stack([f.data for f in frames])
        if len(frames) < self.adapter.frames_per_chunk:
            pad = self.adapter.frames_per_chunk - len(frames)
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        start = time.perf_counter()
        pixels, grid = self.adapter.preprocess(batch, self._size)
        attention = None
        if feature_cache is not None:
            embeds, changed = feature_cache.encode(pixels, grid)
        elif self._vision_layers:  # the pruner reads the encoder's own attention (hiprune)
            embeds, attention = self.adapter.vision_encoder().attention(pixels, grid, self._vision_layers)
            changed = None
            if self._graphed_encode is not None:  # not replayed: its attention maps are read out
                self._graphed_encode.record(EAGER_FOR_ATTENTION)
        else:
            embeds, changed = self._encoder.full(pixels, grid), None
        h, w = self.adapter.merged_grid(grid)
        place = replace(self._place0, index=index, start=first)
        before, after = self.adapter.chunk_text_ids(place, tuple(f.pts_seconds for f in frames))
        on_host = self.adapter.video_positions(replace(place, start=first + len(before)), h, w)
        positions = upload(on_host, self.adapter.device)  # the host reads its copy, never the device's
        last = int(on_host.max()) if on_host.numel() else -1
        text = None
        if before or after:
            after_start = last + 1 if on_host.numel() else first + len(before)
            text = ChunkText(self.adapter.embed_ids(before), self.adapter.text_positions(first, len(before)),
                             self.adapter.embed_ids(after), self.adapter.text_positions(after_start, len(after)))
            last = max(last, after_start + len(after) - 1) if after else last
        chunk = VisualChunk(
            embeds=embeds.to(self.adapter.dtype),
            positions=positions,
            grid_thw=(1, h, w),
            pts_seconds=tuple(f.pts_seconds for f in frames),
            encode_seconds=time.perf_counter() - start,
            changed=changed,
            text=text,
            attention=attention,
            known_last=last,
        )
        with self._lock:
            self._grid_hw = chunk.grid_thw[1:]
            self._no_tokens = chunk.embeds[:0]
            self._stats.seconds.vit += chunk.encode_seconds
        return chunk

    def _attention_layers(self) -> tuple[float, ...]:
        """The ViT layers whose attention the pruner reads (most read none); refused where none can be had."""
        layers = tuple(getattr(self._pruner, "vision_layers", ()))
        if layers and self.adapter.vision_encoder().attention is None:
            raise ConfigError(f"prune={self._pruner.name!r} reads the vision encoder's attention, which the "
                              f"{self.adapter.family} adapter cannot report")  # fmt: skip
        if layers and self._feature_cache is not None:
            raise ConfigError(f"prune={self._pruner.name!r} reads the attention of every ViT token: it cannot "
                              "run with a ViT feature cache (use vit_cache='none')")  # fmt: skip
        return layers

    def check_first_frame_size(self, height: int, width: int) -> None:
        """`FrameError` if the model cannot take a first frame of `height` x `width` (an aspect ratio over its
        limit): a server refuses such a frame when it is sent rather than after accepting it. Once the stream
        has a size, any frame is fine (it is resized to the first one's)."""
        if self._frame_shape is None:
            self._model_size(fit_size(height, width, _stream_config.MAX_INPUT_PIXELS), (height, width))

    def _model_size(self, fitted: tuple[int, int], given: tuple[int, int]) -> tuple[int, int]:
        """The adapter's size for a first frame `fitted` from one of `given` (height, width); a refusal names the
        frame as given, not as downscaled (a 16x2,000,000 frame was described as 1414213x11)."""
        size = partial(self.adapter.target_size, min_pixels=self.config.min_pixels, max_pixels=self.config.max_pixels)
        try:
            return size(*fitted)
        except FrameError:
            if fitted != given:
                size(*given)  # the same refusal, in the caller's numbers
            raise

    def _as_frame(self, frame: Frame | np.ndarray, pts_seconds: float | None) -> Frame:
        last = self._stats.last_pts_seconds
        if pts_seconds is None and isinstance(frame, Frame):
            pts_seconds = frame.pts_seconds
        elif pts_seconds is None:  # the next sampling instant after the last frame
            pts_seconds = self._stats.frames_seen / self.config.fps
            pts_seconds = pts_seconds if last is None or pts_seconds > last else last + 1 / self.config.fps
        pts = check_pts(pts_seconds, last)
        given = frame.data if isinstance(frame, Frame) else frame
        frame = Frame(accept_pixels(given), pts)  # a copy, not theirs
        if self._frame_shape is None:  # sized first: a frame the model refuses must not fix the stream's size
            self._size = self._model_size((frame.height, frame.width), tuple(np.shape(given)[:2]))
            self._frame_shape = (frame.height, frame.width)
        elif (frame.height, frame.width) != self._frame_shape:
            frame = Frame(resize_frame(frame.data, self._frame_shape), frame.pts_seconds, frame.source_id)
        return frame

