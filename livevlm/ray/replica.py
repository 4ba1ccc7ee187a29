"""`Replica`: one model and the streams placed on it -- what a Ray actor of the router runs.

    Router ─► replica.open(id [, snapshot] [, source])   a `Session` on the replica's model, fresh or
                                      `Session.load`ed; a source (file, URL, lavfi) is watched here, a file
                                      resumed at the first sampling instant after the restored stream time
           ─► replica.push(id, frames)        session.push per frame, in order (nothing dropped)
           ─► replica.ask(id, question)       the whole answer's text (a watched source's first frame waited
                                              for before the question takes the model)
           ─► replica.snapshot_all(root)      each stream's `Session.save(root/<id>)`, atomic per stream
A plain class: the router wraps it with `ray.remote`; tests and single-process use may call it directly.
Calls run on the actor's thread pool (`RouterConfig.replica_concurrency`); they and the watched sources'
ingestion threads take turns on the model through the server's `ModelScheduler` (answers first, streams
round-robin), and each session's own lock keeps its state consistent (a snapshot sees no half-pushed chunk).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.disk import pid_space, remove_spill_dirs_of
from ..errors import FrameError, LivevlmError, SessionClosedError, SnapshotError
from ..models import load_model
from ..serve.scheduler import ModelScheduler
from ..session import Session
from ..session_config import SessionConfig
from ..stream import FileSourceConfig


class StreamNotHereError(LivevlmError, KeyError):
    """A stream id that this replica does not hold."""


class Replica:
    """The model, loaded once, and a `Session` per stream placed here."""

    def __init__(self, model: str | None, config: SessionConfig) -> None:
        self.config = config
        self.adapter = load_model(model or config.model, device=config.device, dtype=config.dtype)
        self.sessions: dict[str, Session] = {}
        self.ingestors: dict[str, Any] = {}
        self.scheduler = ModelScheduler()

    def ready(self) -> dict[str, Any]:
        """Who this replica is once its model is loaded: pid (and the pid space it is a number in), model."""
        return {"pid": os.getpid(), "pid_space": pid_space(), "fingerprint": self.adapter.fingerprint(), "family": self.adapter.family}

    def open(self, stream_id: str, snapshot: str | None = None, source: Any = None) -> dict[str, Any]:
        """Start holding `stream_id`: a fresh session, or the one saved at `snapshot` (same model required);
        with a `source`, watched from here (a file from where the restored stream stopped)."""
        self.close(stream_id)
        start = time.perf_counter()
        with self.scheduler.turn():  # a fresh session prefills its system prompt
            if snapshot is None:
                session = Session(self.adapter, self.config)
            else:
                session = Session.load(snapshot, self.adapter, device=self.config.device)
        self.sessions[stream_id] = session
        resumed = None
        if source is not None:
            try:
                spec, resumed = resume_at(source, session.stats.last_pts_seconds, self.config.fps)
                self.ingestors[stream_id] = session.watch(spec, turn=lambda: self.scheduler.turn(stream_id))
            except BaseException:  # a source that cannot be opened: the session is not kept (its KV freed)
                self.close(stream_id)
                raise
        return {**self._status(stream_id), "seconds": time.perf_counter() - start, "resumed_from": resumed}

    def push(self, stream_id: str, frames: list[np.ndarray], pts: list[float | None] | None = None) -> dict[str, Any]:
        """Push `frames` (RGB uint8 arrays) in order, with their stream times (None: the next 1/fps instant).
        Only a frame that completes a temporal patch (a model call) waits for an ingestion turn; one that joins
        the pending patch is pushed at once, as a watched source's are (`Session.watch(turn=...)`)."""
        session = self._session(stream_id)
        if pts is not None and len(pts) != len(frames):
            raise FrameError(f"{len(frames)} frames and {len(pts)} times: give one time per frame (or None)")
        pushed = session._in_turn(lambda item: session.push(*item), lambda: self.scheduler.turn(stream_id))
        rejected = []
        for i, (frame, t) in enumerate(zip(frames, pts or [None] * len(frames))):
            try:
                pushed((frame, t))
            except FrameError as e:  # skipped and counted, as Session.push does; the frames after it still go in
                if len(frames) == 1:
                    raise
                rejected.append(f"frame {i}: {e}")
        if rejected:
            raise FrameError(f"{len(rejected)} of {len(frames)} frames rejected, the other "
                             f"{len(frames) - len(rejected)} pushed: {'; '.join(rejected)}")  # fmt: skip
        return self._status(stream_id)

    def ask(self, stream_id: str, question: str, max_new_tokens: int | None = None, **ask: Any) -> dict[str, Any]:
        """The whole answer: text, tokens decoded, why it ended, the stream time range and chunks it was over."""
        head, *pieces, tail = self.ask_stream(stream_id, question, max_new_tokens=max_new_tokens, **ask)
        return {"text": "".join(pieces), **tail, **head}

    def ask_stream(self, stream_id: str, question: str, **ask: Any) -> Iterator[Any]:
        """{"pts_range", "chunks", "pending_frames"}, then the answer's text pieces, then {"tokens",
        "finish_reason"} (a Ray streaming generator through the router). `ask`: what `Session.ask` takes.
        Decoded as the server does: a watched source's first frame waited for outside the model's turns, then
        answers ahead of ingestion, one token per model turn."""
        session = self._session(stream_id)
        _wait_for_video(session, ask)
        with self.scheduler.question():
            with self.scheduler.turn():
                answer = session.ask(question, **ask)
            yield {"pts_range": list(answer.pts_range), "chunks": answer.chunks,
                   "pending_frames": answer.pending_frames}  # fmt: skip
            try:
                while True:
                    with self.scheduler.turn():
                        piece = next(answer, None)
                    if piece is None:
                        break
                    yield piece
            finally:
                answer.close()
        yield {"tokens": answer.tokens, "finish_reason": answer.finish_reason}

    def wait_for_video(self, stream_id: str, timeout: float | None = None) -> bool:
        """`Session.wait_for_video` of the stream: whether it has a frame to answer over (waited for while a
        watched source may still deliver its first)."""
        return self._session(stream_id).wait_for_video(timeout)

    def check_first_frame_size(self, stream_id: str, height: int, width: int) -> None:
        """`Session.check_first_frame_size` of the stream (`FrameError` for a first frame the model refuses)."""
        self._session(stream_id).check_first_frame_size(height, width)

    def stats(self, stream_id: str) -> Any:
        """The stream's `SessionStats`."""
        return self._session(stream_id).stats

    def latest_frame(self, stream_id: str) -> Any:
        return self._session(stream_id).latest_frame

    def status(self, stream_id: str) -> dict[str, Any]:
        return self._status(stream_id)

    def snapshot(self, stream_id: str, path: str) -> dict[str, Any]:
        """`Session.save(path)` of one stream; what it held then (frames, stream time) and what it cost."""
        info = self._session(stream_id).save(path)
        return {"stream": stream_id, "frames_seen": info.frames_seen, "last_pts_seconds": info.last_pts_seconds,
                "bytes": info.bytes, "seconds": info.seconds}  # fmt: skip

    def snapshot_all(self, root: str) -> dict[str, dict[str, Any]]:
        """A snapshot of every stream held here, each at `root/<stream id>`; a stream whose save failed gets
        {"error": why} (its previous snapshot stays), one closed meanwhile is left out."""
        out: dict[str, dict[str, Any]] = {}
        for sid in list(self.sessions):
            try:
                out[sid] = self.snapshot(sid, str(Path(root) / sid))
            except (StreamNotHereError, SessionClosedError):
                continue
            except SnapshotError as e:
                out[sid] = {"stream": sid, "error": str(e)}
        return out

    def close(self, stream_id: str) -> None:
        ingestor, session = self.ingestors.pop(stream_id, None), self.sessions.pop(stream_id, None)
        if ingestor is not None:
            ingestor.stop()
        if session is not None:
            session.close()
        self.scheduler.drop_stream(stream_id)

    def sweep_spill(self, pid: int, space: str, wait_s: float = 10.0) -> list[str]:
        """Remove the spill dirs a dead replica (`pid` in pid space `space`) left in this config's spill
        parent, once its process is gone; their paths. Nothing when it ran in another pid space."""
        if space != pid_space():
            return []
        tiers = getattr(self.config.kv, "tiers", None)
        return remove_spill_dirs_of(pid, tiers.spill_dir if tiers is not None else None, wait_s)

    def shutdown(self) -> None:
        """Close every session (KV freed, spill files removed)."""
        for sid in list(self.sessions):
            self.close(sid)

    def _session(self, stream_id: str) -> Session:
        try:
            return self.sessions[stream_id]
        except KeyError:
            raise StreamNotHereError(f"stream {stream_id!r} is not on this replica") from None

    def _status(self, stream_id: str) -> dict[str, Any]:
        s, ingestor = self._session(stream_id).stats, self.ingestors.get(stream_id)
        return {"stream": stream_id, "frames_seen": s.frames_seen, "chunks": s.chunks,
                "last_pts_seconds": s.last_pts_seconds, "kv_bytes": s.kv_bytes,
                "watching": bool(ingestor is not None and ingestor.running),
                "error": str(ingestor.error) if ingestor is not None and ingestor.error else None}  # fmt: skip


class ReplicaActor(Replica):
    """What the router runs as an actor: a model that fails to load is kept and raised by `ready()`, so the
    router gets the typed error (`ModelLoadError`, `DeviceUnavailableError`, ...); an actor whose constructor
    raises just dies, and Ray reports only a traceback's text."""

    def __init__(self, model: str | None, config: SessionConfig) -> None:
        self.load_error: LivevlmError | None = None
        try:
            super().__init__(model, config)
        except LivevlmError as e:
            self.load_error = e

    def ready(self) -> dict[str, Any]:
        if self.load_error is not None:
            raise self.load_error
        return super().ready()


def _wait_for_video(session: Session, ask: dict[str, Any]) -> None:
    """Wait for a watched source's first frame before the question takes the model: with one frame per
    chunk (llava_onevision, smolvlm) that frame needs an ingestion turn, which a question holding the model
    would keep from it until its wait ran out. The time waited is taken off `ask["deadline_s"]`; a text-only question or
    a deadline `ask` refuses does not wait (none gets video: `ask` raises `NoVideoError` in its turn)."""
    deadline = ask.get("deadline_s")
    valid = deadline is None or (isinstance(deadline, numbers.Real) and not isinstance(deadline, bool)
                                 and 0 < deadline < math.inf)  # fmt: skip
    if not ask.get("needs_video", True) or not valid:
        return
    t0 = time.monotonic()
    session.wait_for_video(deadline)
    if deadline is not None:
        ask["deadline_s"] = max(1e-3, deadline - (time.monotonic() - t0))


def resume_at(source: Any, last_pts: float | None, fps: float) -> tuple[Any, float | None]:
    """`source` to watch for a stream whose memory ends at `last_pts`, and where a file resumes (else None).

    A file (a path, file:// URL or `FileSourceConfig`) restarts at the first sampling instant after
    `last_pts` on the same grid (start + k/fps), so the frames read again are exactly those not in memory (read
    from its start: `FileSourceConfig.resume_after`, as summarize --resume).
    A live source (camera, RTSP, lavfi) is simply opened again: what it showed meanwhile is gone."""
    if last_pts is None:
        return source, None
    if isinstance(source, (str, Path)):
        path = str(source).removeprefix("file://")
        if "://" in path or path.startswith(("lavfi:", "webcam:")) or not Path(path).is_file():
            return source, None
        source = FileSourceConfig(path, fps=fps)
    if not isinstance(source, FileSourceConfig):
        return source, None
    rate, s0 = source.fps, source.start_seconds
    start = s0 + (math.floor((last_pts - s0) * rate + 1e-6) + 1) / rate if rate else last_pts + 1e-6
    if s0 == 0:  # a whole file: its grid from 0 on, with the frames a slow file holds over instants
        first = source.resume_after[0] if source.resume_after is not None else 0.0
        return dataclasses.replace(source, resume_after=(first, last_pts)), start
    return dataclasses.replace(source, start_seconds=start), start
