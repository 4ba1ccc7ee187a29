"""Standing queries: a question the session re-asks on the live stream, calling back when its answer changes.

    session.watch_for(question, on_change=cb) ─► StandingQuery: a daemon thread
        wait ─ session.wait_for_chunk (a new chunk)  |  every_s seconds of wall time
        ask  ─ session.choose (choices)  |  session.ask (free text): a snapshot under the lock, answered outside it
        diff ─ a different answer than the last one ─► StandingEvent ─► on_change(event), .events
A query asks one question at a time and skips to the latest chunk when the stream outruns it, so it holds up
ingestion only as long as any `ask` does (its snapshot). Answer errors and callback errors are recorded on the
query, which goes on; the session's close() ends every query; `SessionStats.standing` counts their cost.
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AnswerDeadlineError, QuestionError
from .guards import check_choices, check_question

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["StandingEvent", "StandingQuery", "StandingStats"]

POLL_SECONDS = 0.1
"""How often a query waiting for a chunk looks whether it was cancelled."""
_NUMBERS = itertools.count(1)
KEEP_EVENTS = 1024
"""Changes (and callback errors) a query keeps; older ones are dropped, the counters keep counting."""


@dataclass(frozen=True)
class StandingEvent:
    """One answer of a standing query (an `on_change` event when it differs from the previous one)."""

    question: str
    answer: str
    previous: str | None
    """The answer before this one (None for the first)."""
    probabilities: dict[str, float] | None
    """Each choice's probability (queries with `choices`); None for free-text answers."""
    pts_seconds: float | None
    """Stream time of the last frame the answer saw."""
    chunk: int
    """Chunks ingested when the question was asked."""
    seconds: float
    """Wall time the answer took (waiting for the snapshot included)."""

    @property
    def changed(self) -> bool:
        return self.answer != self.previous


@dataclass
class StandingStats:
    """What the session's standing queries have cost (their answers also count in `questions` and `seconds`)."""

    active: int = 0
    """Queries whose thread is running now."""
    started: int = 0
    runs: int = 0
    """Answers asked by standing queries (failed ones included)."""
    changes: int = 0
    """Answers that differed from the previous one (`on_change` events; the first answer counts)."""
    errors: int = 0
    """Answers that raised (recorded on the query's `.error`)."""
    callback_errors: int = 0
    """`on_change` calls that raised (recorded on the query's `.callback_errors`)."""
    seconds: float = 0.0
    """Wall time spent answering."""


class StandingQueries:
    """The session's standing queries and their counters; `cancel_all` is what `close()` calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: list[StandingQuery] = []
        self._stats = StandingStats()

    def add(self, query: StandingQuery) -> None:
        with self._lock:
            self._live.append(query)
            self._stats.started += 1

    def ended(self, query: StandingQuery) -> None:
        with self._lock:
            if query in self._live:
                self._live.remove(query)

    def count(self, **added: float) -> None:
        with self._lock:
            for name, n in added.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def stats(self) -> StandingStats:
        with self._lock:
            s = self._stats
            return StandingStats(len(self._live), s.started, s.runs, s.changes, s.errors, s.callback_errors,
                                 s.seconds)  # fmt: skip

    def cancel_all(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            live = list(self._live)
        for query in live:
            query.cancel(timeout)


class StandingMixin:
    """`watch_for` of `Session` (which holds the `_standing` registry and the state it reads)."""

    _standing: StandingQueries

    def watch_for(
        self,
        question: str,
        *,
        every_s: float | None = None,
        on_change: Callable[[StandingEvent], Any] | None = None,
        choices: Sequence[str] | None = None,
        deadline_s: float | None = None,
    ) -> StandingQuery:
        """Re-ask `question` on the live stream on a background thread; `on_change(event)` when the answer changes.

        It asks at each new chunk (`every_s` None; once per chunk at most, the latest when several came
        meanwhile) or every `every_s` seconds of wall time, starting once the stream has a chunk. With `choices`
        it asks `choose` (the event carries the probabilities), else `ask` (the answer is the stripped text);
        `deadline_s` is passed to each. The first answer is a change (from None). `on_change` runs on the
        query's thread: a slow one delays that query's next answer, never ingestion; one that raises is
        recorded (`callback_errors`) and the query goes on. Returns the running `StandingQuery` (`cancel()`,
        `last`, `events`, a context manager); the question, choices, `every_s` and `deadline_s` are checked
        here (`QuestionError`). `close()` ends every standing query."""
        self._check_open()  # type: ignore[attr-defined]
        query = StandingQuery(self, question, every_s=every_s, on_change=on_change, choices=choices,
                              deadline_s=deadline_s)  # fmt: skip
        self._standing.add(query)
        query._thread.start()
        return query


class StandingQuery:
    """A question re-asked on a live stream (see `Session.watch_for`); cancel() or the session's close() ends it."""

    def __init__(
        self,
        session: Any,
        question: str,
        *,
        every_s: float | None,
        on_change: Callable[[StandingEvent], Any] | None,
        choices: Sequence[str] | None,
        deadline_s: float | None,
    ) -> None:
        self.question = check_question(question)
        self.choices = check_choices(choices) if choices is not None else None
        self.every_s = _seconds("every_s", every_s)
        self.deadline_s = _seconds("deadline_s", deadline_s)
        if on_change is not None and not callable(on_change):
            raise QuestionError(f"on_change must be callable, got {type(on_change).__name__}")
        self._session, self._on_change = session, on_change
        self._stop = threading.Event()
        self._callback_lock = threading.RLock()  # held while on_change runs: cancel() waits for it
        self._cond = threading.Condition()  # guards what follows; notified after every run
        self._last: StandingEvent | None = None
        self._events: deque[StandingEvent] = deque(maxlen=KEEP_EVENTS)
        self._callback_errors: deque[Exception] = deque(maxlen=KEEP_EVENTS)
        self._answered = 0  # chunks the latest run was asked over
        self._runs = 0
        self._ended = False
        self.error: Exception | None = None
        """The latest answer error (the query went on), None if none yet."""
        self.name = f"livevlm-standing-{next(_NUMBERS)}"
        """Its thread's name."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    # -- the user's side ------------------------------------------------------------------------------
    @property
    def last(self) -> StandingEvent | None:
        """The latest answer, changed or not (None before the first)."""
        with self._cond:
            return self._last

    @property
    def events(self) -> list[StandingEvent]:
        """The changes so far, oldest first (the latest `KEEP_EVENTS`)."""
        with self._cond:
            return list(self._events)

    @property
    def callback_errors(self) -> list[Exception]:
        """What `on_change` raised, oldest first (the latest `KEEP_EVENTS`)."""
        with self._cond:
            return list(self._callback_errors)

    @property
    def runs(self) -> int:
        """Answers asked so far (failed ones included)."""
        with self._cond:
            return self._runs

    @property
    def running(self) -> bool:
        """Whether its thread is still going (False once cancelled and joined, or the session closed)."""
        return self._thread.is_alive()

    def wait_answered(self, chunk: int, timeout: float | None = None) -> bool:
        """Wait until an answer (or a failed one) asked over at least `chunk` chunks is done and its callback
        returned; False on timeout or if the query ended first. For stepping a stream in tests and scripts."""
        with self._cond:
            self._cond.wait_for(lambda: self._answered >= chunk or self._ended, timeout)
            return self._answered >= chunk

    def cancel(self, timeout: float | None = 10.0) -> bool:
        """Stop: no `on_change` call starts after this returns (one in progress is waited for, up to `timeout`);
        joins the thread for up to `timeout` seconds and returns whether it ended (an answer in progress is
        finished first). Cancelling twice, or from inside `on_change`, is harmless."""
        self._stop.set()
        if threading.current_thread() is self._thread:
            return False  # called from on_change: the thread ends when it returns
        if self._callback_lock.acquire(timeout=-1 if timeout is None else timeout):
            self._callback_lock.release()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        last = self._last.answer if self._last is not None else None
        return f"StandingQuery({self.question!r}, running={self.running}, last={last!r})"

    # -- the thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        """Wait, ask, compare, call back, until cancelled or the session closes; nothing escapes."""
        registry: StandingQueries = self._session._standing
        try:
            seen = 0  # chunks the latest answer was asked over: the next waits for more
            next_at: float | None = None
            while not self._stop.is_set():
                if self.every_s is None or seen == 0:  # a new chunk (every_s: the first one)
                    chunks = self._session.wait_for_chunk(seen, POLL_SECONDS)
                    if self._session._closed:
                        return
                    if chunks <= seen:
                        continue
                if self.every_s is not None:
                    if next_at is not None and self._stop.wait(_timeout(next_at - time.monotonic())):
                        return
                    now = time.monotonic()
                    next_at = max((next_at or now) + self.every_s, now)  # missed ticks are skipped
                seen = max(seen, self._once(registry))
        except Exception as e:  # noqa: BLE001 - a bug of ours: recorded, not raised on a thread nobody joins
            with self._cond:
                self.error = e
        finally:
            registry.ended(self)
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _once(self, registry: StandingQueries) -> int:
        """One answer, and on_change if it changed; returns the chunks it was asked over."""
        start, chunks = time.perf_counter(), self._session._stats.chunks
        try:
            answer, probs, pts, chunks = self._ask()
        except Exception as e:  # noqa: BLE001 - any answer error is recorded and the query goes on
            if self._session._closed:  # SessionClosedError, or what a closed store raised: the end
                self._stop.set()
                return chunks
            registry.count(runs=1, errors=1, seconds=time.perf_counter() - start)
            with self._cond:
                self.error, self._runs, self._answered = e, self._runs + 1, max(self._answered, chunks)
                self._cond.notify_all()
            return chunks
        seconds = time.perf_counter() - start
        with self._cond:
            previous = self._last.answer if self._last is not None else None
            event = StandingEvent(self.question, answer, previous, probs, pts, chunks, seconds)
            self._last, self._runs = event, self._runs + 1
            if event.changed:
                self._events.append(event)
        registry.count(runs=1, changes=int(event.changed), seconds=seconds)
        if event.changed:
            self._call_back(registry, event)
        with self._cond:
            self._answered = max(self._answered, chunks)
            self._cond.notify_all()
        return chunks

    def _ask(self) -> tuple[str, dict[str, float] | None, float | None, int]:
        """(answer, probabilities, pts_seconds, chunks) over a snapshot of the stream now."""
        session = self._session
        if self.choices is not None:
            choice = session.choose(self.question, self.choices, deadline_s=self.deadline_s)
            return choice.choice, choice.probabilities, choice.pts_seconds, choice.chunks
        # ask() takes its snapshot at the call: holding the (reentrant) lock across the call pins what it saw
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        if not session._lock.acquire(timeout=-1 if self.deadline_s is None else _timeout(self.deadline_s)):
            raise AnswerDeadlineError("the deadline passed while ingestion held the session")
        try:
            chunk, pts = session._stats.chunks, session._stats.last_pts_seconds
            left = None if deadline is None else max(1e-3, deadline - time.monotonic())
            pieces = session.ask(self.question, deadline_s=left)
        finally:
            session._lock.release()
        return "".join(pieces).strip(), None, pts, chunk

    def _call_back(self, registry: StandingQueries, event: StandingEvent) -> None:
        if self._on_change is None:
            return
        with self._callback_lock:
            if self._stop.is_set():
                return
            try:
                self._on_change(event)
            except Exception as e:  # noqa: BLE001 - the user's bug must not end the query
                registry.count(callback_errors=1)
                with self._cond:
                    self._callback_errors.append(e)


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:  # numpy's too
        raise QuestionError(f"{name} must be a finite number of seconds > 0 or None, got {value!r}")
    return float(value)


def _timeout(seconds: float) -> float:
    """`seconds` as a wait the threading module takes (a huge one overflows it)."""
    return min(max(0.0, seconds), threading.TIMEOUT_MAX)
