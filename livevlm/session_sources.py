"""Where a `Session`'s frames come from besides `push`, and what a question waits for before it reads them.

    ingest(file | frames) ─► push() each, to the end (one segment: times shifted to follow the stream)
    watch(source) ─► Ingestor thread ─► push() each (inside `turn()` when it completes a patch)
    push(block=False) ─► a bounded PushSource, watched on first use
    ask / choose ─► _require_video(deadline): a chunk or a pending frame? yes ─► answer
        no, nothing watched, or nothing pushed to a watched push source ─► NoVideoError at once
        no, a source is watched ─► wait (woken by push / step / close) for its first frame, at most until
            `deadline_s`, else the source's own open + read timeouts counted from `watch()`; its end, its
            failure (chained as the reason) or the bound running out without a frame ─► NoVideoError
The bound is counted from `watch()` so that a question right after `watch()` waits out the reader's head start,
while one asked of a source that has sent nothing for longer than its timeouts fails at once.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .context_fit import expected_frames
from .errors import ConfigError, NoVideoError, QuestionError, UnboundedSourceError
from .guards import SegmentPush, check_frames
from .stream import Frame

FIRST_FRAME_S = 10.0
"""Seconds a watched source without timeouts of its own (a file) has, from `watch()`, to deliver its first frame;
and frames already pushed to a push source have to reach the session."""
_POLL_S = 0.1  # a source's end does not notify the session: the wait looks again this often
_NOTHING = ("nothing has been ingested yet (stats.frames_seen is 0: no chunk, no pending frame): push frames, or "
            "ingest / watch a source, before asking")  # fmt: skip


class SourcesMixin:
    """`ingest`, `watch`, `push(block=False)`'s feed and `wait_for_video` of `Session` (which holds the state)."""

    def ingest(self, source: str | Path | Iterable[Frame], progress: bool = False) -> int:
        """Push every frame of a video file (a path, or a file:// / http(s):// URL; sampled at `config.fps`) or
        an iterable of frames.

        One call is one segment: if its first frame is not after the stream's last (a second file, frames
        restarting at 0), the segment's times are shifted to follow on. `check_fits()` tells beforehand
        whether a file fits the model's context."""
        from tqdm.auto import tqdm

        from .stream import FileSource, FileSourceConfig, probe

        self._check_open()
        total = None
        if isinstance(source, str) and "://" in source and not Path(source).exists():  # file://, http(s)://
            from .stream import open_source

            frames_iter = open_source(source, fps=self.config.fps, realtime=False, max_frames=self.config.max_frames)
            if frames_iter.endless:  # a live stream would be read for ever (each end of it a reconnect)
                frames_iter.close()
                raise UnboundedSourceError(
                    f"{frames_iter.source_id} never ends (a live stream): ingest() reads its source to the end; "
                    "give SessionConfig(max_frames=N) to ingest its first N sampled frames, or watch() it to ask "
                    "while it plays"
                )
        elif isinstance(source, (str, Path)):
            cfg = FileSourceConfig(str(source), fps=self.config.fps, max_frames=self.config.max_frames)
            frames_iter: Iterable[Frame] = FileSource(cfg)
            if progress:
                info = probe(source)
                total = expected_frames(info.duration_seconds, self.config.fps, self.config.max_frames)
        else:
            frames_iter = check_frames(source)
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

    def watch(
        self,
        source: Any,
        reader: Any = None,
        *,
        turn: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> Any:
        """Ingest a live source (URL, 'webcam:0', 'lavfi:...', file, config, Source) on a background thread.

        Returns the running `livevlm.stream.Ingestor` (`stop()`, `wait()`, `stats`); `ask()` keeps working, and
        one asked before the source's first frame waits for it (see `wait_for_video`).
        `turn`: each frame is pushed inside `with turn():` -- how a scheduler sharing one model between
        sessions (`livevlm.serve.ModelScheduler`) interleaves their ingestion.
        """
        from .stream import Ingestor, open_source

        self._check_open()
        if self._ingestor is not None and self._ingestor.running:  # close() stops one: a second would run on
            raise ConfigError(
                f"this session already watches {self._ingestor.reader.source.source_id}: stop() the "
                "Ingestor watch() returned first (one source per session; push(block=False) is one)"
            )
        push = self._segment()
        sink = push if turn is None else self._in_turn(push, turn)
        ingestor = Ingestor(open_source(source, fps=self.config.fps), sink, reader)
        with self._lock:  # known before it starts (a close() or SIGTERM right after stops it), running before
            self._ingestor = ingestor  # a question looks at it (one waits for its first frame)
            return ingestor.start()

    def _in_turn(
        self, push: Callable[[Any], Any], turn: Callable[[], AbstractContextManager[Any]]
    ) -> Callable[[Any], Any]:
        """`push` run inside `turn()` when the frame completes a temporal patch (a model call); a frame that
        only joins the pending patch is pushed at once. Only the watched source's thread pushes."""

        def pushed(frame: Any) -> Any:
            if len(self._pending) + 1 < self.adapter.frames_per_chunk:
                return push(frame)
            with turn():
                return push(frame)

        return pushed

    def _segment(self) -> SegmentPush:
        """`push` for one source (an ingest() or watch()): shifted, once, to follow the stream's last frame."""
        return SegmentPush(self.push, lambda: self._stats.last_pts_seconds, self.config.fps)

    def _feeder(self) -> Any:
        """The bounded, keep-latest PushSource behind `push(block=False)`, watched on first use."""
        from .stream import PushSource

        with self._lock:
            self._check_open()
            if self._feed is None:
                self._feed = PushSource(capacity=8, policy="latest", source_id="push(block=False)")
                self.watch(self._feed)
            return self._feed

    # -- the first frame --------------------------------------------------------------------------------
    def wait_for_video(self, timeout: float | None = None) -> bool:
        """Whether the session has video to answer over (a chunk or a pending frame), waiting while a watched
        source may still deliver its first frame: at most `timeout` seconds, and with None for the source's own
        open + read timeouts (`FIRST_FRAME_S` for a file) counted from `watch()`. Raises only
        `SessionClosedError` (and `QuestionError` for a `timeout` that is not a number >= 0).

        `ask` and `choose` do this first and raise `NoVideoError` saying why when it is False; a server calls
        it before taking the model's turn, which a source's first chunk may need."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout >= 0):  # fmt: skip
            raise QuestionError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        self._check_open()  # (the fast path below would answer True from a closed session's counters)
        deadline = None if timeout is None else time.monotonic() + min(float(timeout), 1e9)
        return self._missing_video(deadline) is None

    def _require_video(self, deadline: float | None) -> None:
        """`NoVideoError` (its reason: a watched source's own error) unless there is video to answer over."""
        missing = self._missing_video(deadline)
        if missing is not None:
            message, reason = missing
            raise NoVideoError(message, reason) from reason

    def _missing_video(self, deadline: float | None) -> tuple[str, BaseException | None] | None:
        """None once a chunk or a pending frame is there; else (why not, the source's error) when no frame can
        come in time (see the module docstring)."""
        if self._stats.chunks or self._pending:  # the usual case: no wait for a step that holds the lock
            return None
        with self._chunk_done:  # the session's lock; waiting on it lets the ingestor push
            start = time.monotonic()
            while True:
                self._check_open()
                if self._stats.chunks or self._pending:
                    return None
                ingestor = self._ingestor
                if ingestor is None:
                    return _NOTHING, None
                verdict = _first_frame(ingestor, deadline, start)
                if not isinstance(verdict, float):
                    return verdict
                left = verdict - time.monotonic()
                if left <= 0:
                    return _late(ingestor, deadline, start), None
                self._chunk_done.wait(min(left, _POLL_S))


def _first_frame(
    ingestor: Any, deadline: float | None, start: float
) -> tuple[str, BaseException | None] | float:
    """For a watched source that has not delivered a frame: (why none will, its error) when it ended or nothing
    was pushed to it, else until when (monotonic) to wait for one."""
    from .stream import PushSource

    source, stats = ingestor.reader.source, ingestor.stats
    if not ingestor.running:
        error = ingestor.error
        refused = (f" ({stats.frames_rejected} frames refused; the last: {stats.last_rejection})"
                   if stats.frames_rejected else "")  # fmt: skip
        why = f": {error}" if error is not None else ""
        return (f"nothing has been ingested yet: {source.source_id} ended after {stats.seconds:.1f} s without a "
                f"frame{refused}{why}"), error  # fmt: skip
    if isinstance(source, PushSource):
        buffer = stats.buffer
        if buffer.depth == 0 and buffer.frames_out <= stats.frames_processed + stats.frames_rejected:
            if stats.frames_rejected:  # pushed, and every one refused by the session: say why
                return (f"nothing has been ingested yet: the {stats.frames_rejected} frames pushed to the push "
                        f"source {source.source_id!r} were all refused (the last: {stats.last_rejection})"), None
            return (f"nothing has been ingested yet: no frame has been pushed to the push source "
                    f"{source.source_id!r} (stats.frames_seen is 0): push frames before asking"), None  # fmt: skip
        return deadline if deadline is not None else start + FIRST_FRAME_S  # frames on their way
    if deadline is not None:
        return deadline
    return time.monotonic() - stats.seconds + first_frame_bound(source)


def first_frame_bound(source: Any) -> float:
    """Seconds a watched source has, from `watch()`, to deliver its first frame: its open + read timeouts where
    it has them (a URL, a camera, a lavfi graph), else `FIRST_FRAME_S`."""
    timeouts = getattr(source, "timeouts", None)
    if timeouts and all(isinstance(t, (int, float)) and math.isfinite(t) for t in timeouts):
        return float(sum(timeouts))
    return FIRST_FRAME_S


def _late(ingestor: Any, deadline: float | None, start: float) -> str:
    """Why a question gave up waiting for a watched source's first frame (which source, how long)."""
    from .stream import PushSource

    source, stats = ingestor.reader.source, ingestor.stats
    waited = time.monotonic() - start
    if deadline is not None:
        how = f"within the question's deadline_s ({waited:.1f} s waited)"
    elif isinstance(source, PushSource):
        how = f"in {waited:.1f} s of waiting (the frames pushed to it had not reached the session)"
    else:
        how = (f"in the {stats.seconds:.1f} s since it was watched (a first frame is waited for "
               f"{first_frame_bound(source):g} s from watch())")  # fmt: skip
    return (f"nothing has been ingested yet: no frame came from {source.source_id} {how}; ask again once "
            "stats.frames_seen > 0, or with a longer deadline_s")  # fmt: skip
