"""Answering on the shared model: a thread decodes inside scheduler turns; the event loop awaits its events.

    request (event loop) ─► AnswerJob.start() ─► thread: session.wait_for_video() (a first frame, outside turns)
                                                  with scheduler.question():
                                                      with scheduler.turn(): answer = session.ask(...)
                                                          (the snapshot; choices are scored here)
                                                      per piece: with scheduler.turn(): next(answer)
                                                      (`stop` strings: text that may begin one waits;
                                                       a whole one ends the answer and is left out)
    events (asyncio.Queue, via call_soon_threadsafe) ◄─ ("delta", text) ... ("done", summary) | ("error", exc)
A client that goes away cancels the job: the thread stops before its next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from ..errors import SessionClosedError
from .errors import InvalidRequestError
from .scheduler import ModelScheduler


@dataclass
class AnswerSummary:
    """What the done event carries."""

    text: str
    pts_range: tuple[float | None, float | None]
    chunks: int
    tokens: int
    finish_reason: str
    pending_frames: int = 0
    """Frames not yet a chunk that the answer read too (in its own prefill)."""


class AnswerJob:
    """One question answered on a background thread; iterate `events()` on the event loop."""

    def __init__(self, session: Any, scheduler: ModelScheduler, question: str, stop: Sequence[str] = (),
                 **ask: Any) -> None:  # fmt: skip
        self.session, self.scheduler, self.question, self.ask = session, scheduler, question, ask
        self.stop = StopStrings(stop)
        self._cancel = threading.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def _put(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    def _wait_for_video(self) -> None:
        """Wait for a stream's first frame before taking the model: that frame's chunk may need a turn (one frame
        per chunk in some families) that a question holding the model would keep from it. A stream that gets
        none is refused by `session.ask` in its turn, at once, after the request's other checks."""
        wait = self.session.wait_for_video  # a Session, or a Ray stream's RemoteSession
        deadline = self.ask.get("deadline_s")
        finite = isinstance(deadline, (int, float)) and 0 < deadline < math.inf  # else ask refuses it
        t0 = time.monotonic()
        wait(deadline if finite else None)
        if finite:  # the wait spent part of the answer's deadline
            self.ask["deadline_s"] = max(1e-3, deadline - (time.monotonic() - t0))

    def _run(self) -> None:
        try:
            self._wait_for_video()
            with self.scheduler.question():
                with self.scheduler.turn():  # choices are scored here, a constraint compiled
                    answer = self.session.ask(self.question, **self.ask)
                self._put("start", answer)
                pieces: list[str] = []
                try:
                    while not self._cancel.is_set() and not self.stop.found:
                        with self.scheduler.turn():
                            piece = next(answer, None)
                        text = self.stop.feed(piece)
                        if text:
                            pieces.append(text)
                            self._put("delta", text)
                        if piece is None:
                            break
                finally:
                    answer.close()
                finish = "stop" if self.stop.found else answer.finish_reason
                pending = answer.pending_frames
                summary = AnswerSummary("".join(pieces), answer.pts_range, answer.chunks, answer.tokens, finish,
                                        pending)  # fmt: skip
            self._put("done", summary)
        except SessionClosedError:  # the Session's own words ("start a new Session") mean nothing to an HTTP client
            self._put("error", SessionClosedError(
                "the stream was closed while answering (deleted, idle past --idle-timeout, or the server stopping)"))  # fmt: skip
        except Exception as e:  # noqa: BLE001 -- handed to the request, which maps it to a status
            self._put("error", e)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("start", AnswerStream) once, ("delta", text)*, then ("done", AnswerSummary) or ("error", exception)."""
        thread = threading.Thread(target=self._run, name="livevlm-answer", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await self._queue.get()
                yield kind, value
                if kind in ("done", "error"):
                    return
        finally:
            self._cancel.set()


async def whole_answer(
    events: AsyncIterator[tuple[str, Any]], client_gone: Callable[[], Awaitable[None]]
) -> AnswerSummary | None:
    """The done summary of a non-streamed answer; None when `client_gone()` returns first (the client left:
    the job is cancelled, so nothing decodes for nobody). An error event is raised."""
    gone = asyncio.ensure_future(client_gone())
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return None
            kind, value = step.result()
            if kind == "error":
                raise value
            if kind == "done":
                return value
    finally:
        gone.cancel()
        await events.aclose()  # type: ignore[attr-defined]


async def client_gone(request: Any) -> None:
    """Returns when the client of a Starlette `request` disconnects (its body has been read: only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def gone_response() -> JSONResponse:
    """What a request whose client left is answered with (nobody reads it; 499 as nginx logs it)."""
    return JSONResponse({"error": {"status": 499, "message": "the client closed the request"}}, status_code=499)


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """OpenAI's `stop`: one string or up to 4; the answer ends before the first that appears."""
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > 4 or not all(strings):
        raise InvalidRequestError(f"stop must be up to 4 non-empty strings, got {stop!r}")
    return strings


class StopStrings:
    """Cuts streamed text at the first of some stop strings (OpenAI's `stop`), which is itself left out.

    `feed(piece)` returns the text that is safe to send now: text that could still become the start of a stop
    string waits for the next piece; `feed(None)` (the answer ended) returns what waited."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.strings = [s for s in stop if s]
        self.found = False
        self._held = ""

    def feed(self, piece: str | None) -> str | None:
        if not self.strings:
            return piece
        if piece is None:
            held, self._held = self._held, ""
            return held or None
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        if hits:
            self.found, self._held = True, ""
            return text[: min(hits)]
        keep = max((n for s in self.strings for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]
