"""`StreamManager`: the streams a server holds -- each a `Session` on the shared model, fed by its source.

create(source) ─► resolve_source (policy) ─► Session(shared adapter) made inside a model turn
    push: PushSource (bounded, keep-latest) ◄─ frames from the WebSocket / POST
    url/lavfi/file: open_source ─► LiveReader (bounded, own thread)
    ─► session.watch(reader, turn=scheduler.turn(id))  (the Ingestor thread pushes inside turns)
delete(id) / idle reaping / shutdown ─► session.close(): sources stopped, KV freed, spill files removed.
"""

from __future__ import annotations

import collections
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..session import Session
from ..stream import LiveReader, PushSource, ReaderConfig, open_source
from ..stream.url import redact
from .config import ServeConfig
from .errors import ConflictError, InvalidRequestError, StreamNotFoundError, TooManyStreamsError
from .scheduler import ModelScheduler
from .sources import ResolvedSource, resolve_source

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RATE_WINDOW_S = 10.0


@dataclass
class ServedStream:
    """One stream the server holds."""

    id: str
    name: str | None
    source: str
    kind: str
    session: Session
    push: PushSource | None
    ingestor: Any
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    frames_seen: int = 0
    samples: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    push_t0: float | None = None
    """When a push stream got its first frame (monotonic): a frame sent without pts is stamped with the time since."""

    answering: int = 0
    """Answers being decoded over the stream: it is not idle while one runs, however long it takes."""

    def touch(self) -> None:
        self.last_active = time.monotonic()

    async def answer_events(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """`events` (an answer's), counted in `answering` until they end or are closed."""
        self.answering += 1
        try:
            async for item in events:
                yield item
        finally:
            self.answering -= 1
            self.touch()
            await events.aclose()  # type: ignore[attr-defined]


class StreamManager:
    """Creates, finds, describes and closes streams within the server's limits. Thread-safe."""

    def __init__(self, adapter: Any, config: ServeConfig, scheduler: ModelScheduler) -> None:
        self.adapter = adapter
        self.config = config
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._streams: dict[str, ServedStream] = {}
        self._opening = 0  # slots reserved by creations still opening their source

    def create(self, source: str, name: str | None = None) -> ServedStream:
        """Open `source` as a new stream (blocking: a URL is connected to first)."""
        resolved = resolve_source(source, self.config.allowed_schemes, self.config.media_dir)
        if name is not None and not _NAME.match(name):
            raise InvalidRequestError(
                f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        with self._lock:
            if len(self._streams) + self._opening >= self.config.limits.max_streams:
                raise TooManyStreamsError(
                    f"the server holds its maximum of {self.config.limits.max_streams} streams: delete one first"
                )
            if name is not None and any(s.name == name or s.id == name for s in self._streams.values()):
                raise ConflictError(f"a stream named {name!r} exists already")
            self._opening += 1
        try:
            stream = self._open(resolved, source, name)
        finally:
            with self._lock:
                self._opening -= 1
        with self._lock:
            taken = name is not None and any(s.name == name for s in self._streams.values())
            if not taken:
                self._streams[stream.id] = stream
        if taken:  # another request made a stream of that name while this one was opening
            _close(stream)
            raise ConflictError(f"a stream named {name!r} exists already")
        return stream

    def _open(self, resolved: ResolvedSource, source: str, name: str | None) -> ServedStream:
        sid = "s-" + secrets.token_hex(4)
        limits = self.config.limits
        fps = self.config.session.fps
        push, reader = None, None
        if resolved.kind == "push":
            push = PushSource(capacity=limits.buffer_frames, policy="latest", source_id=f"push:{sid}")
            reader = LiveReader(push)
        else:  # opened before the session: a bad URL fails without touching the model
            opened = open_source(resolved.spec, fps=fps, realtime=True)
            reader = LiveReader(opened, ReaderConfig(capacity=limits.buffer_frames))
            reader.start()
        try:
            with self.scheduler.turn():  # the session prefills its system prompt on the shared model
                session = Session(self.adapter, self.config.session)
            ingestor = session.watch(reader, turn=lambda: self.scheduler.turn(sid))
        except BaseException:
            reader.close()
            raise
        return ServedStream(sid, name, source, resolved.kind, session, push, ingestor)

    def get(self, key: str) -> ServedStream:
        """The stream with id or name `key`."""
        with self._lock:
            stream = self._streams.get(key) or next(
                (s for s in self._streams.values() if s.name == key), None
            )
            names = [s.name or s.id for s in self._streams.values()]
        if stream is None:
            listed = ", ".join(names) if names else "none (create one with POST /v1/streams)"
            raise StreamNotFoundError(f"no stream {key!r}; streams: {listed}")
        return stream

    def list(self) -> list[ServedStream]:
        with self._lock:
            return list(self._streams.values())

    def delete(self, key: str) -> None:
        """Close the stream: its source stops, its KV context and spill files are freed."""
        stream = self.get(key)
        with self._lock:
            self._streams.pop(stream.id, None)
        _close(stream)
        self.scheduler.drop_stream(stream.id)

    def close_all(self) -> None:
        """Close every stream and what holds them (the server is stopping)."""
        self.close_streams()

    def close_streams(self) -> None:
        """Close every stream (answers still decoding end with their 410 event); the manager stays usable."""
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            _close(stream)

    def reap_idle(self) -> list[str]:
        """Close streams with no frame and no request for `idle_timeout_s`; returns their ids."""
        timeout = self.config.limits.idle_timeout_s
        if not timeout:
            return []
        now, idle = time.monotonic(), []
        for stream in self.list():
            seen = stream.session.stats.frames_seen
            if seen != stream.frames_seen:
                stream.frames_seen = seen
                stream.touch()
            elif now - stream.last_active > timeout and not stream.answering:
                idle.append(stream.id)
        for sid in idle:
            try:
                self.delete(sid)
            except StreamNotFoundError:
                pass
        return idle

    def describe(self, stream: ServedStream, full: bool = True) -> dict[str, Any]:
        """The stream as JSON: identity, a live status (rates over the last seconds) and its SessionStats."""
        from .jsonable import jsonable

        stats = stream.session.stats
        ing = stats.stream
        frames_in = ing.source.frames_decoded if ing else 0
        processed = ing.frames_processed if ing else 0
        now = time.monotonic()
        stream.samples.append((now, frames_in, processed))
        while len(stream.samples) > 2 and now - stream.samples[0][0] > _RATE_WINDOW_S:
            stream.samples.popleft()
        t0, in0, p0 = stream.samples[0]
        dt = now - t0
        status = {
            "frames_in": frames_in,
            "frames_processed": processed,
            "frames_dropped": ing.buffer.frames_dropped if ing else 0,
            "frames_rejected": stats.frames_rejected + (stream.push.stats.frames_rejected if stream.push else 0),
            "frames_corrupt": ing.source.frames_corrupt if ing else 0,
            "fps_in": round((frames_in - in0) / dt, 2) if dt > 0 else 0.0,
            "fps_processed": round((processed - p0) / dt, 2) if dt > 0 else 0.0,
            "context_tokens": stats.kv_tokens,
            "kv_bytes": stats.kv_bytes,
            "chunks": stats.chunks,
            "pending_frames": stats.pending_frames,  # not yet a chunk: an answer reads them in its own prefill
            "questions": stats.questions,
            "first_pts_seconds": stats.first_pts_seconds,
            "last_pts_seconds": stats.last_pts_seconds,
        }
        out: dict[str, Any] = {
            "id": stream.id,
            "name": stream.name,
            "source": redact(stream.source),  # a camera URL's password is not shown
            "kind": stream.kind,
            "created": stream.created,
            "running": bool(ing and ing.running),
            "error": ing.error if ing else None,
            "status": status,
        }
        if full:
            out["stats"] = jsonable(stats)
            if isinstance(out["stats"].get("kv"), dict):  # one score per chunk of the whole stream: a status the
                out["stats"]["kv"].pop("last_scores", None)  # page polls each second would grow with the stream
        return out


def _close(stream: ServedStream) -> None:
    if stream.push is not None:
        stream.push.stop()
    stream.session.close()
