"""`ask()` from other threads while ingestion runs: answers over a consistent snapshot, ingestion goes on."""

from __future__ import annotations

import threading
import time

from livevlm import Session, SessionConfig
from livevlm.assets import sample_video_path
from livevlm.stream import PushSource, read_frames

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_ask_from_other_threads_while_watching(tiny_adapters) -> None:
    session = Session(tiny_adapters["qwen2_5_vl"], SessionConfig(fps=4.0))
    ingestor = session.watch("lavfi:testsrc2=size=160x120:rate=20")  # a camera stand-in, paced in real time
    try:
        wait_until(lambda: session.stats.chunks >= 2, "the first chunks")
        answers: list[str] = []

        def asker() -> None:
            answers.append("".join(session.ask("What do you see?", max_new_tokens=6)))

        askers = [threading.Thread(target=asker) for _ in range(2)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(HANG_GUARD)
        after_answers = session.stats.chunks
        wait_until(lambda: session.stats.chunks >= after_answers + 2, "ingestion to keep going")
        stats = session.stats
    finally:
        assert ingestor.stop()
    assert len(answers) == 2 and all(answers)
    assert stats.questions == 2 and stats.answer_tokens >= 2
    live = stats.stream  # the watched source's counters, through the session
    assert live.running and live.error is None and live.source.frames_decoded > live.frames_processed > 0
    assert live.buffer.max_depth <= live.buffer.capacity


def test_answer_is_over_the_snapshot_taken_when_asked(tiny_adapters) -> None:
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(sample_video_path(), fps=2.0)[:8]
    session = Session(adapter)
    robot = PushSource(capacity=16, policy="block")
    ingestor = session.watch(robot)
    for f in frames[:4]:
        robot.push(f)
    wait_until(lambda: session.stats.frames_seen == 4, "4 frames ingested")
    answer = session.ask_ids("What moves?", max_new_tokens=6)  # the snapshot is taken here
    tokens: list[int] = []
    decoder = threading.Thread(target=lambda: tokens.extend(answer))
    decoder.start()  # decoded on another thread while the robot keeps pushing
    for f in frames[4:]:
        robot.push(f)
    decoder.join(HANG_GUARD)
    robot.end()
    assert ingestor.wait(HANG_GUARD)
    assert session.stats.frames_seen == 8 and session.stats.chunks == 4
    reference = Session(adapter)  # the same model, fed only what had been ingested when asked
    for f in frames[:4]:
        reference.push(f)
    assert tokens == list(reference.ask_ids("What moves?", max_new_tokens=6))
    assert tokens != list(session.ask_ids("What moves?", max_new_tokens=6))  # 4 chunks answer otherwise
