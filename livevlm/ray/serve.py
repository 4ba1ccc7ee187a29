"""`livevlm serve --ray`: the same HTTP API, its streams held by Ray replicas through a `Router`.

    HTTP (livevlm.serve app, unchanged routes) ─► RayStreamManager (a StreamManager: same policy, limits, ids)
        create(source)  push ─► a front-end PushSource (bounded, keep-latest, as in one process)
                              ─► PushFeed: Ingestor thread ─► router.push(id, frame)   (no model here)
                        url / lavfi / file ─► router.open(id, source): the replica watches it
        ServedStream.session = RemoteSession: ask ─► router.ask_stream (Ray streaming generator: text pieces)
                                              wait_for_video ─► the PushFeed's frames on their way reach
                                                  the replica, then the replica's session.wait_for_video
                                              stats / latest_frame ─► the replica's
Answers and ingestion are scheduled on the replicas (each has its ModelScheduler); the front end's scheduler
never holds anything (`Unscheduled`), so streams on different replicas answer in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import NoVideoError, QuestionError
from ..serve.config import ServeConfig
from ..serve.scheduler import SchedulerStats
from ..serve.sources import ResolvedSource
from ..serve.streams import ServedStream, StreamManager
from ..session_sources import FIRST_FRAME_S
from ..stream import FileSourceConfig, Frame, Ingestor, LiveReader, PushSource
from .router import Router, RouterConfig

_POLL_S = 0.1  # a feed's end does not notify: a wait for its frames looks again this often


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
        self.pending_frames = int(head["pending_frames"])
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


class PushFeed:
    """A push stream's frames on their way to its replica: the front end's PushSource ─► an Ingestor thread ─►
    `router.push`, one frame at a time; `settle` waits for those on their way (a frame accepted by the frame
    route is not yet on the replica, whose own `wait_for_video` cannot see it)."""

    def __init__(self, router: Router, stream_id: str, push: PushSource) -> None:
        self.router, self.id = router, stream_id
        self.delivered = 0
        """Frames the replica took (`router.push` returned)."""
        self._sent = 0  # router.push calls that returned or raised
        self._moved = threading.Condition()
        self.ingestor = Ingestor(LiveReader(push), self._push).start()

    def _push(self, frame: Frame) -> None:
        taken = False
        try:
            self.router.push(self.id, frame.data, [frame.pts_seconds])
            taken = True
        finally:
            with self._moved:
                self.delivered, self._sent = self.delivered + taken, self._sent + 1
                self._moved.notify_all()

    def settle(self, until: float) -> None:
        """Wait, at most until `until` (monotonic), for a frame to reach the replica while any is on its way."""
        with self._moved:
            while self._on_its_way() and (left := until - time.monotonic()) > 0:
                self._moved.wait(min(left, _POLL_S))

    def _on_its_way(self) -> bool:
        stats = self.ingestor.stats
        if self.delivered or not stats.running:
            return False
        return stats.buffer.depth > 0 or stats.buffer.frames_out > self._sent

    @property
    def stats(self) -> Any:
        return self.ingestor.stats

    def stop(self) -> None:
        self.ingestor.stop()


class RemoteSession:
    """What the server's routes use of a `Session`, for a stream held by a replica."""

    def __init__(self, router: Router, stream_id: str, feed: PushFeed | None = None) -> None:
        self.router, self.id, self.feed = router, stream_id, feed
        self._sized = False

    def ask(self, question: str, **ask: Any) -> RemoteAnswer:
        try:
            return RemoteAnswer(self.router.ask_stream(self.id, question, **ask))
        except NoVideoError as error:  # the replica's session sees no source: name the front end's, as one process
            if self.feed is None or self.feed.delivered or self.feed.stats.buffer.frames_in:
                raise
            raise NoVideoError(f"nothing has been ingested yet: no frame has been pushed to the push source "
                               f"'push:{self.id}' (stats.frames_seen is 0): push frames before asking") from error

    def check_first_frame_size(self, height: int, width: int) -> None:
        """`Session.check_first_frame_size` on the replica, until one size passed: the frame of that size sets
        the stream's (any later frame is resized to it), so the round trip is not paid for every frame."""
        if not self._sized:
            self.router.call(self.id, "check_first_frame_size", height, width)
            self._sized = True

    def wait_for_video(self, timeout: float | None = None) -> bool:
        """`Session.wait_for_video` across Ray: a push stream's frames still in the front end's feed reach the
        replica first (at most `timeout`, None: `FIRST_FRAME_S`), then the replica waits for its session's
        (a watched source's first frame) for what is left of `timeout`."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout >= 0):  # fmt: skip
            raise QuestionError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        until = time.monotonic() + (FIRST_FRAME_S if timeout is None else min(float(timeout), 1e9))
        if self.feed is not None:
            self.feed.settle(until)
        left = None if timeout is None else max(0.0, until - time.monotonic())
        return bool(self.router.call(self.id, "wait_for_video", left))

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
        feed = PushFeed(self.router, sid, push)
        session = RemoteSession(self.router, sid, feed)
        return ServedStream(sid, name, source, "push", session, push, feed.ingestor)  # type: ignore[arg-type]

    def close_all(self) -> None:
        super().close_all()
        self.router.close()
