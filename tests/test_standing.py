"""Standing queries (`Session.watch_for`) on the bundled model, over world clips whose answers are known.

The stream is pushed from the test thread one frame at a time and, after each chunk, the test waits until the
query has answered over it (`wait_answered`): every assertion is about chunks, never about timing.
Assumption (checked by hand for these scenes): the bundled model answers "What colour is the {shape} at the
end?" with the colour shown so far on every partial stream, switching at the chunk where the colour changes
(probability >= 0.8 for the chosen colour throughout). Re-checked for each bundled model: the one bundled on
2026-12-02 answers a circle's first one or two chunks "red" at about 0.3 (a prior, the sample's circle is red),
so the first scene, a circle until then, is a triangle.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from livevlm import Session, SessionClosedError, load_model
from livevlm.errors import AnswerDeadlineError, QuestionError
from livevlm.standing import StandingEvent
from tools.yardstick.world import COLOURS, FPS, Track, render

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure
FRAMES = 16

# (shape, colour, new colour, the frame it changes on, render seed): chunks are 2 frames, so the change
# first shows in chunk change // 2 + 1 (counting ingested chunks)
SCENES = [
    ("triangle", "blue", "orange", 8, 1),
    ("cross", "purple", "yellow", 10, 2),
    ("square", "red", "blue", 12, 4),
]


@pytest.fixture(scope="module")
def yardstick():
    """The bundled default model, loaded once in float32 through the normal path."""
    return load_model(None, dtype="float32")


def scene(shape: str, c0: str, c1: str, change: int, seed: int) -> tuple[np.ndarray, str, int]:
    """The clip's frames, the "at the end" question about it and the chunk count at which the change shows."""
    track = Track(shape, 11.0, c0, [(0, FRAMES)], (30.0, 40.0), (1.7, -1.3), recolour=(change, c1))
    pixels, _ = render([track], FRAMES, np.random.default_rng(seed))
    return pixels, f"What colour is the {shape} at the end?", change // 2 + 1


def stream(session: Session, frames: np.ndarray, *queries, start: int = 0) -> None:
    """Push `frames` (from index `start`) one by one; after each chunk, wait until every query answered it."""
    for i in range(start, len(frames)):
        if session.push(frames[i], pts_seconds=i / FPS) is not None:
            for query in queries:
                assert query.wait_answered(session.stats.chunks, HANG_GUARD), "the query did not answer"


def check_change(events: list[StandingEvent], question: str, c0: str, c1: str, change_chunk: int) -> None:
    """The first answer (chunk 1) is the first colour; the new one comes at the change chunk or within 2 after."""
    assert [e.answer for e in events] == [c0, c1]
    first, change = events
    assert (first.question, first.previous, first.chunk, first.pts_seconds) == (question, None, 1, 1 / FPS)
    assert change.previous == c0 and change_chunk <= change.chunk <= change_chunk + 2
    assert change.pts_seconds == (2 * change.chunk - 1) / FPS  # the last frame of the chunk it saw
    assert all(e.seconds > 0 for e in events)


@pytest.mark.parametrize(("shape", "c0", "c1", "change", "seed"), SCENES, ids=[s[0] for s in SCENES])
def test_choices_query_fires_at_the_start_and_at_the_change(yardstick, shape, c0, c1, change, seed) -> None:
    frames, question, change_chunk = scene(shape, c0, c1, change, seed)
    seen: list[StandingEvent] = []
    with Session(yardstick) as session:
        query = session.watch_for(question, choices=list(COLOURS), on_change=seen.append)
        stream(session, frames, query)
        assert query.cancel()
        stats = session.stats.standing
    check_change(seen, question, c0, c1, change_chunk)
    assert query.events == seen and query.last.chunk == FRAMES // 2 and query.last.answer == c1
    for event in seen:  # every choice's probability, the answer the likeliest
        assert set(event.probabilities) == set(COLOURS)
        assert sum(event.probabilities.values()) == pytest.approx(1)
        assert max(event.probabilities, key=event.probabilities.get) == event.answer
    assert query.error is None and query.callback_errors == []
    assert (stats.active, stats.started, stats.runs, stats.changes, stats.errors) == (0, 1, FRAMES // 2, 2, 0)
    assert stats.seconds > 0


def test_free_text_query_runs_beside_a_choices_query(yardstick) -> None:
    shape, c0, c1, change, seed = SCENES[0]
    frames, question, change_chunk = scene(shape, c0, c1, change, seed)
    with Session(yardstick) as session:
        text = session.watch_for(question)
        chosen = session.watch_for(question, choices=list(COLOURS))
        assert session.stats.standing.started == 2
        stream(session, frames, text, chosen)
        assert session.stats.standing.active == 2
    check_change(text.events, question, c0, c1, change_chunk)
    assert all(e.probabilities is None for e in text.events)
    assert [e.answer for e in text.events] == [e.answer for e in chosen.events]
    assert session.stats.standing.runs == 2 * FRAMES // 2 and not text.running and not chosen.running


def test_cancel_stops_callbacks_and_close_stops_every_query(yardstick) -> None:
    shape, c0, c1, change, seed = SCENES[0]
    frames, question, _ = scene(shape, c0, c1, change, seed)
    session = Session(yardstick)
    calls: list[StandingEvent] = []
    query = session.watch_for(question, choices=list(COLOURS), on_change=calls.append)
    stream(session, frames[:4], query)  # 2 chunks, before the change
    assert query.running and session.stats.standing.active == 1
    assert query.cancel() and query.cancel()  # twice is harmless
    assert not query.running and session.stats.standing.active == 0
    assert query.name not in {t.name for t in threading.enumerate()}
    runs = query.runs
    stream(session, frames, start=4)  # the change comes after the cancel: nobody answers it
    assert [e.answer for e in calls] == [c0] and query.runs == runs == 2 and query.last.chunk == 2
    assert not query.wait_answered(3, timeout=HANG_GUARD)  # an ended query returns at once

    with session.watch_for(question) as scoped:  # a context manager cancels on exit
        assert scoped.wait_answered(FRAMES // 2, HANG_GUARD) and scoped.last.answer == c1
    assert not scoped.running
    a, b = session.watch_for(question), session.watch_for(question, every_s=30.0, choices=list(COLOURS))
    assert a.wait_answered(FRAMES // 2, HANG_GUARD) and b.wait_answered(FRAMES // 2, HANG_GUARD)
    assert session.stats.standing.active == 2
    session.close()  # b is asleep until its next tick: close wakes and ends it too
    assert not a.running and not b.running and a.error is None and b.error is None
    stats = session.stats.standing
    assert (stats.active, stats.started) == (0, 4)
    with pytest.raises(SessionClosedError):
        session.watch_for(question)


def test_a_raising_callback_or_answer_does_not_stop_the_query(yardstick) -> None:
    shape, c0, c1, change, seed = SCENES[1]
    frames, question, change_chunk = scene(shape, c0, c1, change, seed)

    def broken(event: StandingEvent) -> None:
        raise RuntimeError(f"the app broke on {event.answer}")

    with Session(yardstick) as session:
        query = session.watch_for(question, choices=list(COLOURS), on_change=broken)
        late = session.watch_for(question, choices=list(COLOURS), deadline_s=1e-6)  # never scores in time
        stream(session, frames, query, late)
        assert query.running and late.running
        stats = session.stats.standing
    check_change(query.events, question, c0, c1, change_chunk)
    assert [str(e) for e in query.callback_errors] == [f"the app broke on {c}" for c in (c0, c1)]
    assert query.last.chunk == FRAMES // 2 and query.error is None
    assert isinstance(late.error, AnswerDeadlineError) and late.last is None and late.runs == FRAMES // 2
    assert (stats.callback_errors, stats.errors, stats.runs) == (2, FRAMES // 2, FRAMES)


def test_a_callback_runs_without_holding_up_ingestion(yardstick) -> None:
    shape, c0, c1, change, seed = SCENES[0]
    frames, question, _ = scene(shape, c0, c1, change, seed)
    entered, release = threading.Event(), threading.Event()

    def slow(event: StandingEvent) -> None:
        entered.set()
        release.wait(HANG_GUARD)

    with Session(yardstick) as session:
        query = session.watch_for(question, choices=list(COLOURS), on_change=slow)
        session.push(frames[0], pts_seconds=0.0)
        session.push(frames[1], pts_seconds=1 / FPS)
        assert entered.wait(HANG_GUARD)  # the first answer's callback is blocked ...
        for i in range(2, FRAMES):  # ... and the stream goes on (this would hang if it held the session)
            session.push(frames[i], pts_seconds=i / FPS)
        assert session.stats.chunks == FRAMES // 2 and query.runs == 1
        release.set()
        assert query.wait_answered(FRAMES // 2, HANG_GUARD)  # then it skips to the latest chunk
        assert query.last.answer == c1 and query.runs == 2


def test_every_s_re_asks_on_a_push_fed_stream(yardstick) -> None:
    shape, c0, c1, change, seed = SCENES[0]
    frames, question, _ = scene(shape, c0, c1, change, seed)
    with Session(yardstick) as session:
        query = session.watch_for(question, every_s=0.05, choices=list(COLOURS))
        for i, frame in enumerate(frames):
            session.push(frame, block=False)  # a background thread ingests it
            wait_until(lambda n=i + 1: session.stats.frames_seen == n, "the frame ingested")  # none dropped
        runs = query.runs
        wait_until(lambda: query.runs >= runs + 3, "more answers with no new frames")  # wall-time re-asks
        assert query.cancel() and session.stats.standing.active == 0
    assert query.runs >= 3 and query.events and query.events[0].previous is None
    assert query.last.answer == c1 and query.last.chunk == FRAMES // 2
    assert len(query.events) <= 3  # re-asking the same stream does not fire again


def test_bad_arguments_are_refused_at_the_call(yardstick) -> None:
    with Session(yardstick) as session:
        for kwargs in ({"choices": ["red"]}, {"choices": "red"}, {"every_s": 0}, {"deadline_s": -1.0},
                       {"on_change": "print"}):  # fmt: skip
            with pytest.raises(QuestionError):
                session.watch_for("What colour is the circle?", **kwargs)
        with pytest.raises(QuestionError):
            session.watch_for("   ")
        assert session.stats.standing.started == 0


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
