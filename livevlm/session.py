"""`Session`: one stream, one model, the loop. Every model call is here; caches and stores only store.

push(frame) ─► pending (one temporal patch = 2 frames) ─► step():
    1. encode   adapter.preprocess ─► ViT cache (wraps the model's vision encoder) ─► embeds
                adapter.video_positions ─► VisualChunk(embeds, (t, h, w) positions)
    2. prune    the strategy keeps the salient tokens at their original positions
    3. forward  adapter.forward(kept tokens) on kv.ingest_view(): what the policy lets a chunk attend to
    4. commit   kv.commit(view): the store keeps the chunk's KV (tiers, summaries, window)
ask(question) ─► kv.snapshot() ─► [probe: adapter.question_queries on kv.probe_view(snapshot)]
    ─► kv.answer_view(snapshot, queries) ─► prefill [pending odd frame] + question ─► greedy decode
    ─► yields text; the stream context is untouched
Input checks live in `guards`, how an answer ends (end tokens, repetition settings, loops) in `answer_stop`,
the up-front context estimate in `context_fit`. After `close()` every method but `stats` raises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .answer_stop import AnswerStop, Penalties, answer_text, generation_eos
from .cache import build_feature_cache, build_kv_store
from .context_fit import check_stream_fits, expected_frames
from .errors import ContextOverflowError, FrameError, LivevlmError, SessionClosedError
from .guards import SegmentPush, check_pts, check_question
from .kernels import backend as kernel_backends
from .models import ChunkPlace, VideoLMAdapter, VisualChunk, load_model
from .prune import build_pruner
from .session_config import SessionConfig, SessionStats
from .stream import Frame, fit_frame

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Session", "SessionConfig", "SessionStats"]


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
        self._kv = build_kv_store(config.kv, self.adapter.kv_layout())
        if self._kv.needs_queries:
            self.adapter.enable_query_probe()  # refused here if the model's attention cannot be probed
        self._feature_cache = build_feature_cache(config.vit_cache, self.adapter.vision_encoder())
        self._pruner = build_pruner(config.prune)
        self._pending: list[Frame] = []
        self._frame_shape: tuple[int, int] | None = None
        self._size: tuple[int, int] | None = None
        self._grid_hw: tuple[int, int] = (0, 0)
        self._max_position = -1  # the highest position of any visual token, kept or not
        self._stored_end = 0  # one past the highest position stored in the KV context
        self._stats = SessionStats()
        self._ingestor: Any = None
        self._closed = False
        self._prompt_ids: list[int] = []
        self._place0 = ChunkPlace(0, 0, self.adapter.frames_per_chunk / config.fps)
        self._start_prompt()

    # -- ingestion ------------------------------------------------------------------------------------
    def push(self, frame: Frame | np.ndarray, pts_seconds: float | None = None) -> VisualChunk | None:
        """Add one RGB uint8 (H, W, 3) frame; returns the (pruned) chunk it completed, if any.

        `pts_seconds` (None: the `Frame`'s own, or for an array the next 1/fps instant after the last frame) is
        seconds since the stream's start: a finite number in [0, 1e9], greater than the previous accepted
        frame's. Anything else (a string, NaN, inf, negative, a duplicate or backwards time) raises
        `FrameError` and is counted in `stats.frames_rejected`, like a malformed frame; the stream goes on.
        `ingest()` and `watch()` shift a source that starts before the stream's time (a second file, a restart)
        so it follows it."""
        with self._lock:
            self._check_open()
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
            self._check_open()
            frames, self._pending = self._pending, []  # a failed encode must not leave a stuck, overfull patch
            chunk = self._encode(frames, self._stats.chunks, self._feature_cache)  # 1. encode
            self._max_position = max(self._max_position, int(chunk.positions.max()))
            kept = self._pruner(chunk)  # 2. prune
            if kept.num_tokens:  # 3. forward on the store's view, 4. commit
                self._prefill(kept.embeds, kept.positions, pts_seconds=chunk.pts_seconds)
            s = self._stats
            s.chunks += 1
            s.visual_tokens += chunk.num_tokens
            return kept

    def _prefill(self, embeds: torch.Tensor, positions: torch.Tensor, **commit: Any) -> None:
        """Run `embeds` at `positions` on the store's ingestion view and commit their KV to the stream."""
        start = time.perf_counter()
        view = self._kv.ingest_view()
        self.adapter.forward(embeds, positions, view)
        self._kv.commit(view, int(embeds.shape[0]), **commit)
        self._stored_end = max(self._stored_end, int(positions.max()) + 1)
        s = self._stats
        s.seconds.prefill += time.perf_counter() - start
        s.kv_tokens, s.kv_bytes = self._kv.stats.tokens, self._kv.stats.bytes

    def ingest(self, source: str | Path | Iterable[Frame], progress: bool = False) -> int:
        """Push every frame of a video file (sampled at `config.fps`) or an iterable of frames.

        One call is one segment: if its first frame is not after the stream's last (a second file, frames
        restarting at 0), the segment's times are shifted to follow on. `check_fits()` tells beforehand
        whether a file fits the model's context."""
        from tqdm.auto import tqdm

        from .stream import FileSource, FileSourceConfig, probe

        self._check_open()
        total = None
        if isinstance(source, (str, Path)):
            cfg = FileSourceConfig(str(source), fps=self.config.fps, max_frames=self.config.max_frames)
            frames_iter: Iterable[Frame] = FileSource(cfg)
            if progress:
                info = probe(source)
                total = expected_frames(info.duration_seconds, self.config.fps, self.config.max_frames, info.fps)
        else:
            frames_iter = source
        count, push = 0, self._segment()
        try:
            with tqdm(total=total, unit="frame", desc="ingest", disable=not progress, leave=False) as bar:
                for frame in frames_iter:
                    push(frame)
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

        self._check_open()
        ingestor = Ingestor(open_source(source, fps=self.config.fps), self._segment(), reader).start()
        with self._lock:
            self._ingestor = ingestor
        return ingestor

    def _segment(self) -> SegmentPush:
        """`push` for one source (an ingest() or watch()): shifted, once, to follow the stream's last frame."""
        return SegmentPush(self.push, lambda: self._stats.last_pts_seconds, self.config.fps)

    # -- questions ------------------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int | None = None) -> Iterator[str]:
        """Stream the answer's text over the context so far; the stream context is left unchanged.

        Refused at the call (not at the first piece) like `ask_ids`; an answer may be empty."""
        return answer_text(self.ask_ids(question, max_new_tokens), self.adapter.decode_text)

    def ask_ids(self, question: str, max_new_tokens: int | None = None) -> Iterator[int]:
        """Greedy token ids of the answer (the end-of-turn token included when reached).

        The question must be non-empty UTF-8 text (`QuestionError`). Decoding follows the checkpoint's
        generation config (end tokens, repetition_penalty, no_repeat_ngram_size) and stops on a clear loop
        (`config.stop_repeats`), keeping one copy (`stats.answers_stopped_repeating`). If the session is
        closed before the answer ends, its next token raises `SessionClosedError`."""
        question = check_question(question)
        budget = max_new_tokens or self.config.max_new_tokens
        with self._lock:  # a consistent snapshot: ingestion may go on while we answer
            self._check_open()
            suffix = self.adapter.suffix_ids(question)
            extra = self.adapter.tokens_per_chunk(self._size) if self._pending else 0
            needed = self._kv.stats.tokens + extra + len(suffix) + budget
            if needed > self.adapter.max_context:
                raise ContextOverflowError(
                    f"context of {self._kv.stats.tokens + extra} stream tokens + {len(suffix)} question tokens + "
                    f"{budget} answer tokens exceeds the model's {self.adapter.max_context}"
                )
            state = _AskState(
                self._kv.snapshot(), list(self._pending), self._stats.chunks, self._max_position, self._stored_end
            )
            self._stats.questions += 1
            gen = self.adapter.model.generation_config
            visual = max(0, self._kv.stats.tokens - len(self._prompt_ids)) + extra
            penalties = Penalties(gen, self._prompt_ids, self.adapter.video_token_id, visual, suffix)
        stop = AnswerStop(self.adapter.eos_token_ids | generation_eos(gen), self.config.stop_repeats)
        return self._answer(state, suffix, budget, stop, penalties)

    def _answer(
        self, state: _AskState, suffix: list[int], budget: int, stop: AnswerStop, penalties: Penalties
    ) -> Iterator[int]:
        """prefill the question on the selected context, then decode greedily (like gpt-fast's generate)."""
        produced, prefill, t0 = 0, 0.0, time.perf_counter()
        try:
            self._check_open()
            logits, cache, next_pos = self._prefill_question(state, suffix)
            prefill, t0 = time.perf_counter() - t0, time.perf_counter()
            for _ in range(budget):
                token = int(torch.argmax(penalties(logits, stop.ids)))
                produced += 1
                yield from stop.push(token)
                if stop.done:
                    break
                self._check_open()
                pos = self.adapter.text_positions(next_pos, 1)
                logits = self.adapter.forward(self.adapter.embed_ids([token]), pos, cache)
                next_pos += 1
            yield from stop.flush()
        except Exception as e:  # the session closed under a running step: say so, not what broke
            if self._closed and not isinstance(e, LivevlmError):
                raise SessionClosedError("the session was closed while this answer was being decoded") from e
            raise
        finally:
            with self._lock:
                self._stats.answer_tokens += produced
                self._stats.answers_stopped_repeating += stop.looped
                self._stats.seconds.prefill += prefill
                self._stats.seconds.decode += time.perf_counter() - t0

    def _prefill_question(self, state: _AskState, suffix: list[int]) -> tuple[torch.Tensor, Any, int]:
        """Select the context for the question (probing its queries if the policy reads them), prefill a
        pending odd frame and the question on it; returns (logits, cache, next decode position)."""
        question = self.adapter.embed_ids(suffix)
        queries = None
        if self._kv.needs_queries:  # the question runs once on the ingestion view, right after the stream
            probe_at = self.adapter.text_positions(state.stored_end, len(suffix))
            queries = self.adapter.question_queries(question, probe_at, self._kv.probe_view(state.snapshot))
        cache = self._kv.answer_view(state.snapshot, queries)  # query-time KV selection
        chunks, max_pos = state.chunks, state.max_position
        if state.pending:  # a half-filled temporal patch: padded like the HF processor does, not pruned
            chunk = self._encode(state.pending, chunks, None)
            self.adapter.forward(chunk.embeds, chunk.positions, cache)
            chunks, max_pos = chunks + 1, max(max_pos, int(chunk.positions.max()))
        start = self.adapter.text_start_after_video(self._place0, chunks, self._grid_hw)
        logits = self.adapter.forward(question, self.adapter.text_positions(start, len(suffix)), cache)
        return logits, cache, max(max_pos, start + len(suffix) - 1) + 1

    def check_fits(self, num_frames: int, frame_hw: tuple[int, int], question: str = "") -> None:
        """Refuse up front (`ContextOverflowError`, naming the remedy: `kv="bilevel"` or the `max_frames` that
        fit) `num_frames` more frames of `frame_hw` (height, width) that `kv="full"` cannot answer `question`
        over within the model's context. An estimate from the budget: bounded KV policies and pruners whose
        kept count depends on the content are not refused here (`ask` still checks)."""
        with self._lock:
            self._check_open()
            if self.config.kv.policy != "full" or num_frames < 1:
                return
            size = self._size or self.adapter.target_size(
                *frame_hw, min_pixels=self.config.min_pixels, max_pixels=self.config.max_pixels
            )
            check_stream_fits(
                self.adapter, self._pruner, used=self._kv.stats.tokens, pending=len(self._pending),
                num_frames=num_frames, size=size, question=question, max_new_tokens=self.config.max_new_tokens,
            )  # fmt: skip

    def close(self) -> None:
        """Stop a watched source and release the KV store (a disk tier's files are deleted); the session is done.

        Afterwards every method but `stats` raises `SessionClosedError`, and so does the next token of an answer
        still being decoded (what it yielded stands). Closing twice is harmless."""
        if self._ingestor is not None:
            self._ingestor.stop()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._kv.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("this session is closed (close() was called): start a new Session")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------------
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
                stream=stream,
                kernels={op: str(choice) for op, choice in self._kernels().items()},
            )

    def _kernels(self) -> dict[str, Any]:
        """The backend each kernel runs for this model; the ViT cache's linear reports what it really ran."""
        choices: dict[str, Any] = kernel_backends(self.adapter.dtype, str(self.adapter.device))
        runner = getattr(self._feature_cache, "runner", None)
        if runner is not None:
            choices["linear"] = runner.linear.choice
        return choices

    def _start_prompt(self) -> None:
        ids = self._prompt_ids = self.adapter.prefix_ids(self.config.system_prompt)
        self._prefill(self.adapter.embed_ids(ids), self.adapter.text_positions(0, len(ids)), is_prompt=True)
        self._max_position = len(ids) - 1
        self._place0 = ChunkPlace(0, len(ids), self._place0.seconds_per_chunk)
        self._stats.seconds.prefill = 0.0  # the system prompt is set-up, not stream work

    def _encode(self, frames: list[Frame], index: int, feature_cache: Any) -> VisualChunk:
        batch = np.stack([f.data for f in frames])
        if len(frames) < self.adapter.frames_per_chunk:
            pad = self.adapter.frames_per_chunk - len(frames)
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        start = time.perf_counter()
        pixels, grid = self.adapter.preprocess(batch, self._size)
        if feature_cache is not None:
            embeds, changed = feature_cache.encode(pixels, grid)
        else:
            embeds, changed = self.adapter.vision_encoder().full(pixels, grid), None
        h, w = self.adapter.merged_grid(grid)
        positions = self.adapter.video_positions(replace(self._place0, index=index), h, w)
        chunk = VisualChunk(
            embeds=embeds.to(self.adapter.dtype),
            positions=positions,
            grid_thw=(1, h, w),
            pts_seconds=tuple(f.pts_seconds for f in frames),
            encode_seconds=time.perf_counter() - start,
            changed=changed,
        )
        with self._lock:
            self._grid_hw = chunk.grid_thw[1:]
            self._stats.seconds.vit += chunk.encode_seconds
        return chunk

    def _as_frame(self, frame: Frame | np.ndarray, pts_seconds: float | None) -> Frame:
        last = self._stats.last_pts_seconds
        if pts_seconds is None and isinstance(frame, Frame):
            pts_seconds = frame.pts_seconds
        elif pts_seconds is None:  # the next sampling instant after the last frame
            pts_seconds = self._stats.frames_seen / self.config.fps
            pts_seconds = pts_seconds if last is None or pts_seconds > last else last + 1 / self.config.fps
        pts = check_pts(pts_seconds, last)
        frame = Frame(fit_frame(frame.data if isinstance(frame, Frame) else frame), pts)
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


@dataclass(frozen=True)
class _AskState:
    """What a question is answered over, taken under the lock so ingestion can go on meanwhile."""

    snapshot: Any
    pending: list[Frame]
    chunks: int
    max_position: int
    stored_end: int


def _resize_uint8(data: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to the stream's first frame size (a camera changed resolution)."""
    x = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
