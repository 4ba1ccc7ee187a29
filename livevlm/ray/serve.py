"""`livevlm serve --ray`: the same HTTP API, its streams held by Ray replicas through a `Router`.

    HTTP (livevlm.serve app, unchanged routes) ─► RayStreamManager (a StreamManager: same policy, limits, ids)
        create(source)  push ─► a front-end PushSource (bounded, keep-latest, as in one process)
                              ─► Ingestor thread ─► router.push(id, frame)         (no model here)
                        url / lavfi / file ─► router.open(id, source): the replica watches it
        ServedStream.session = RemoteSession: ask ─► router.ask_stream (Ray streaming generator: text pieces)
                                              stats / latest_frame ─► the replica's
Answers and ingestion are scheduled on the replicas (each has its ModelScheduler); the front end's scheduler
never holds anything (`Unscheduled`), so streams on different replicas answer in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Iterator
from typing import Any

from ..serve.config import ServeConfig
from ..serve.scheduler import SchedulerStats
from ..serve.sources import ResolvedSource
from ..serve.streams import ServedStream, StreamManager
from ..stream import FileSourceConfig, Ingestor, LiveReader, PushSource
from .router import Router, RouterConfig


class Unscheduled:
    """The front end's stand-in for `ModelScheduler`: no model here, so turns never wait."""

    @contextlib.contextmanager
    def question(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def turn(self, stream_id: str | None = None) -> Iterator[None]:
        yield

    def drop_stream(self, stream_id: str) -> None:
        pass

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats()


class RemoteAnswer:
    """An `AnswerStream` whose pieces come from the replica: iterate the text; then tokens, finish_reason."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        head = next(items)
        self.pts_range, self.chunks = tuple(head["pts_range"]), int(head["chunks"])
        self.tokens, self.finish_reason = 0, "stop"

    def __iter__(self) -> RemoteAnswer:
        return self

    def __next__(self) -> str:
        item = next(self._items)
        if isinstance(item, dict):  # the summary ends the answer
            self.tokens, self.finish_reason = int(item["tokens"]), str(item["finish_reason"])
            raise StopIteration
        return item

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class RemoteSession:
    """What the server's routes use of a `Session`, for a stream held by a replica."""

    def __init__(self, router: Router, stream_id: str, feed: Ingestor | None = None) -> None:
        self.router, self.id, self.feed = router, stream_id, feed

    def ask(self, question: str, **ask: Any) -> RemoteAnswer:
        return RemoteAnswer(self.router.ask_stream(self.id, question, **ask))

    @property
    def stats(self) -> Any:
        stats = self.router.call(self.id, "stats")
        return dataclasses.replace(stats, stream=self.feed.stats) if self.feed is not None else stats

    @property
    def latest_frame(self) -> Any:
        return self.router.call(self.id, "latest_frame")

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        self.router.close_stream(self.id)


class RayStreamManager(StreamManager):
    """The server's `StreamManager` (source policy, limits, names, describe, idle reaping) over a `Router`."""

    def __init__(self, config: ServeConfig, router: RouterConfig | Router) -> None:
        super().__init__(None, config, Unscheduled())  # type: ignore[arg-type]
        self.router = router if isinstance(router, Router) else Router(router)

    def _open(self, resolved: ResolvedSource, source: str, name: str | None) -> ServedStream:
        sid = "s-" + secrets.token_hex(4)
        if resolved.kind != "push":
            spec: Any = resolved.spec
            if resolved.kind == "file":  # paced like a camera, as the one-process server reads it
                spec = FileSourceConfig(resolved.spec, fps=self.config.session.fps, realtime=True)
            self.router.open(sid, source=spec)
            return ServedStream(sid, name, source, resolved.kind, RemoteSession(self.router, sid), None, None)  # type: ignore[arg-type]
        self.router.open(sid)
        push = PushSource(capacity=self.config.limits.buffer_frames, policy="latest", source_id=f"push:{sid}")
        feed = Ingestor(LiveReader(push), lambda frame: self.router.push(sid, frame.data, [frame.pts_seconds]))
        session = RemoteSession(self.router, sid, feed.start())
        return ServedStream(sid, name, source, "push", session, push, feed)  # type: ignore[arg-type]

    def close_all(self) -> None:
        super().close_all()
        self.router.close()
