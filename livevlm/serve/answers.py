"""Answering on the shared model: a thread decodes inside scheduler turns; the event loop awaits its events.

    request (event loop) ─► AnswerJob.start() ─► thread: with scheduler.question():
                                                      with scheduler.turn(): answer = session.ask(...)
                                                          (the snapshot; choices are scored here)
                                                      per piece: with scheduler.turn(): next(answer)
    events (asyncio.Queue, via call_soon_threadsafe) ◄─ ("delta", text) ... ("done", summary) | ("error", exc)
A client that goes away cancels the job: the thread stops before its next turn.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .scheduler import ModelScheduler


@dataclass
class AnswerSummary:
    """What the done event carries."""

    text: str
    pts_range: tuple[float | None, float | None]
    chunks: int
    tokens: int
    finish_reason: str


class AnswerJob:
    """One question answered on a background thread; iterate `events()` on the event loop."""

    def __init__(self, session: Any, scheduler: ModelScheduler, question: str, **ask: Any) -> None:
        self.session, self.scheduler, self.question, self.ask = session, scheduler, question, ask
        self._cancel = threading.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def _put(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    def _run(self) -> None:
        try:
            with self.scheduler.question():
                with self.scheduler.turn():  # choices are scored here, a constraint compiled
                    answer = self.session.ask(self.question, **self.ask)
                self._put("start", answer)
                pieces: list[str] = []
                try:
                    while not self._cancel.is_set():
                        with self.scheduler.turn():
                            piece = next(answer, None)
                        if piece is None:
                            break
                        pieces.append(piece)
                        self._put("delta", piece)
                finally:
                    answer.close()
                summary = AnswerSummary("".join(pieces), answer.pts_range, answer.chunks, answer.tokens,
                                        answer.finish_reason)  # fmt: skip
            self._put("done", summary)
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
