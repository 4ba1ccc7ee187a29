"""`ModelScheduler`: one loaded model shared by many streams, one model call at a time.

Threads ask for a turn and run their model work inside it:
    ingestion  `with scheduler.turn(stream_id):` one frame pushed (a ViT encode + prefill every 2 frames)
    questions  `with scheduler.question():` around a whole answer, and `with scheduler.turn():` per token
Who goes next when the model frees up:
    1. a question's turn (FIFO among answers), while any answer is running -- answers go ahead of ingestion,
       but a waiting ingestion step gets one turn after `question_burst` question turns in a row, or once
       answers have held the model long enough since the last ingestion turn that ingestion's share of the
       time would fall below `ingest_share` (an ingestion step costing d seconds waits d * (1 - share) / share
       of answering: turns are cheap on a GPU and slow on a CPU), so a steady stream of questions slows
       ingestion down without stopping it;
    2. otherwise the waiting stream served longest ago (round-robin: no stream starves).
A stream whose ingestion waits here falls behind its source; its bounded buffer then drops frames by its
policy (keep the latest) and says so in its stats. Lock order: a turn is taken before a session's lock,
never while holding it (Session.watch(turn=...) and the answer loop both do so), so turns cannot deadlock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace


@dataclass
class SchedulerStats:
    """What the scheduler has granted, and how long turns waited for the model."""

    ingest_turns: int = 0
    question_turns: int = 0
    answers_running: int = 0
    waiting_ingest: int = 0
    """Ingestion turns waiting for the model now."""
    waiting_questions: int = 0
    """Question turns waiting for the model now."""
    ingest_wait_seconds: float = 0.0
    question_wait_seconds: float = 0.0
    busy_seconds: float = 0.0
    """Time the model spent inside turns."""
    turns_by_stream: dict[str, int] = field(default_factory=dict)


class ModelScheduler:
    """A fair, priority lock around the shared model (see the module docstring for the rules)."""

    def __init__(self, question_burst: int = 16, ingest_share: float = 0.2) -> None:
        if question_burst < 1:
            raise ValueError(f"question_burst must be >= 1, got {question_burst}")
        if not 0 < ingest_share <= 1:
            raise ValueError(f"ingest_share must be in (0, 1], got {ingest_share}")
        self.question_burst = question_burst
        self.ingest_share = ingest_share
        self._ingest_cost = 0.0  # seconds the last ingestion turn held the model
        self._ingest_end = 0.0  # when it ended (monotonic)
        self._cond = threading.Condition()
        self._busy = False
        self._tickets = itertools.count()
        self._questions: list[int] = []  # tickets of waiting question turns, FIFO
        self._ingest: dict[int, str] = {}  # ticket -> stream id of waiting ingestion turns
        self._last_served: dict[str, int] = {}  # stream id -> grant number of its last turn
        self._grants = itertools.count(1)
        self._answers = 0
        self._burst = 0  # question turns granted in a row while ingestion waited
        self._stats = SchedulerStats()

    @contextmanager
    def question(self) -> Iterator[None]:
        """Mark an answer as running (its token turns then go ahead of ingestion)."""
        with self._cond:
            self._answers += 1
        try:
            yield
        finally:
            with self._cond:
                self._answers -= 1
                self._cond.notify_all()

    @contextmanager
    def turn(self, stream_id: str | None = None) -> Iterator[None]:
        """Hold the model: an ingestion turn of `stream_id`, or a question's turn when it is None."""
        t0 = time.perf_counter()
        with self._cond:
            ticket = next(self._tickets)
            if stream_id is None:
                self._questions.append(ticket)
            else:
                self._ingest[ticket] = stream_id
            self._cond.notify_all()  # a new waiter can change who goes next (an ingestion share falling due)
            try:
                while not (not self._busy and self._next() == ticket):
                    self._cond.wait(0.05)  # a time share falls due without a notify
            except BaseException:
                self._forget(ticket)
                self._cond.notify_all()
                raise
            self._forget(ticket)
            self._grant(stream_id, time.perf_counter() - t0)
            self._busy = True
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                held = time.perf_counter() - start
                self._stats.busy_seconds += held
                if stream_id is not None:
                    self._ingest_cost, self._ingest_end = held, time.monotonic()
                self._cond.notify_all()

    def _next(self) -> int | None:
        """The ticket that goes next (called under the condition's lock)."""
        share_due = bool(self._ingest) and (
            self._burst >= self.question_burst
            or time.monotonic() - self._ingest_end >= self._ingest_cost * (1 - self.ingest_share) / self.ingest_share
        )
        if self._questions and not share_due:
            return self._questions[0]
        if self._answers and not share_due:
            return None  # an answer is between two tokens: the model waits for it
        return self._first_ingest()

    def _first_ingest(self) -> int | None:
        if not self._ingest:
            return None
        return min(self._ingest, key=lambda t: (self._last_served.get(self._ingest[t], 0), t))

    def _forget(self, ticket: int) -> None:
        if ticket in self._ingest:
            del self._ingest[ticket]
        elif ticket in self._questions:
            self._questions.remove(ticket)

    def _grant(self, stream_id: str | None, waited: float) -> None:
        s = self._stats
        if stream_id is None:
            s.question_turns += 1
            s.question_wait_seconds += waited
            self._burst = self._burst + 1 if self._ingest else 0
        else:
            s.ingest_turns += 1
            s.ingest_wait_seconds += waited
            s.turns_by_stream[stream_id] = s.turns_by_stream.get(stream_id, 0) + 1
            self._last_served[stream_id] = next(self._grants)
            self._burst = 0

    def drop_stream(self, stream_id: str) -> None:
        """Forget a deleted stream's round-robin place and counters."""
        with self._cond:
            self._last_served.pop(stream_id, None)
            self._stats.turns_by_stream.pop(stream_id, None)

    @property
    def stats(self) -> SchedulerStats:
        """A copy of the counters."""
        with self._cond:
            by_stream = dict(self._stats.turns_by_stream)
            return replace(self._stats, answers_running=self._answers, turns_by_stream=by_stream,
                           waiting_ingest=len(self._ingest), waiting_questions=len(self._questions))  # fmt: skip
