"""Asking before the stream has a frame: a typed `NoVideoError`, never an answer from the question alone; a
question right after `watch()` waits for the source's first frame; text-only questions on purpose; and answers
(and stats) that say they read a pending frame. The bundled model on the sample clip's real frames."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest
from media import make_zero_frame_video

from livevlm import Session, load_model
from livevlm.assets import sample_video_path
from livevlm.errors import EmptyVideoError, NoVideoError, QuestionError
from livevlm.stream import PushSource, Source, read_frames

QUESTION = "What colour is the circle?"
COLOURS = ["red", "green", "blue"]
HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def bundled():
    return load_model()


@pytest.fixture(scope="module")
def frames():
    return read_frames(str(sample_video_path()), fps=2.0, max_frames=4)


class LateCamera(Source):
    """The sample clip's frames, coming only once `gate` is set: a camera still connecting when asked."""

    live = True

    def __init__(self, frames, gate: threading.Event) -> None:
        super().__init__("late-camera")
        self.frames, self.gate = frames, gate

    def _run(self):
        while not self.gate.wait(0.02):
            if self.stopped:
                return
        yield from self.frames


class SilentCamera(Source):
    """A camera that connects and never sends a frame; its open + read timeouts bound the first frame's wait."""

    live = True
    timeouts = (0.2, 0.3)  # as a URL or camera source has them (`open_timeout`, `read_timeout`)

    def __init__(self) -> None:
        super().__init__("silent-camera")

    def _run(self):
        while not self.stopped:
            self._stop.wait(0.02)
        return
        yield


def test_a_question_before_any_frame_is_a_typed_error_not_an_answer(bundled):
    with Session(bundled) as session:
        for ask in (lambda: session.ask(QUESTION), lambda: session.ask_ids(QUESTION),
                    lambda: session.choose(QUESTION, COLOURS), lambda: session.ask(QUESTION, choices=COLOURS),
                    lambda: session.ask(QUESTION, within=(0, 1))):  # fmt: skip
            with pytest.raises(NoVideoError, match="nothing has been ingested yet") as info:
                ask()  # was: "red", over chunks=0
            assert isinstance(info.value, QuestionError)  # callers that catch QuestionError keep working
            assert "frames_seen is 0" in str(info.value) and "push frames" in str(info.value)
        with pytest.raises(QuestionError, match="non-empty"):  # a bad question is still refused as such
            session.ask("   ")
        assert session.stats.questions == 0 and session.stats.frames_seen == 0


def test_a_text_only_question_is_asked_on_purpose(bundled):
    with Session(bundled) as session:
        answer = session.ask("Say something.", 4, needs_video=False)
        assert isinstance("".join(answer), str) and answer.tokens >= 1
        assert (answer.chunks, answer.pending_frames, answer.pts_range) == (0, 0, (None, None))
        assert session.choose(QUESTION, COLOURS, needs_video=False).choice in COLOURS
        assert session.stats.questions == 2


def test_answers_and_stats_say_they_read_the_pending_frame(bundled, frames):
    with Session(bundled) as session:
        session.push(frames[0])  # an odd frame: pending, read in the question's own prefill
        assert (session.stats.chunks, session.stats.pending_frames) == (0, 1)
        answer = session.ask(QUESTION)
        assert "".join(answer).strip()
        assert (answer.chunks, answer.pending_frames) == (0, 1) and answer.pts_range == (0.0, 0.0)
        chosen = session.choose(QUESTION, COLOURS)
        assert (chosen.chunks, chosen.pending_frames) == (0, 1)
        session.push(frames[1])  # the patch is complete: a chunk, nothing pending
        assert (session.stats.chunks, session.stats.pending_frames) == (1, 0)
        answer = session.ask(QUESTION, 2)
        assert (answer.chunks, answer.pending_frames) == (1, 0)


def test_asking_right_after_watch_waits_for_the_first_frame(bundled, frames):
    gate = threading.Event()
    with Session(bundled) as session:
        ingestor = session.watch(LateCamera(frames, gate))
        threading.Timer(0.3, gate.set).start()  # the camera delivers a moment after the question is asked
        answer = session.ask(QUESTION, deadline_s=HANG_GUARD)
        assert "".join(answer).strip()
        assert answer.pts_range[0] == frames[0].pts_seconds  # was: (None, None), answered from the question alone
        assert answer.chunks + answer.pending_frames >= 1
        ingestor.stop()


def test_push_block_false_then_ask_at_once_reads_that_frame(bundled, frames):
    with Session(bundled) as session:
        session.push(frames[0], block=False)  # queued for the background ingestion
        answer = session.ask(QUESTION)
        assert answer.pts_range == (0.0, 0.0)  # was: (None, None), asked before the ingestion thread pushed it
        assert (answer.chunks, answer.pending_frames) == (0, 1)


def test_a_watched_push_source_with_nothing_pushed_is_refused_at_once(bundled):
    with Session(bundled) as session:
        ingestor = session.watch(PushSource(source_id="robot-arm"))
        with pytest.raises(NoVideoError, match="no frame has been pushed to the push source 'robot-arm'"):
            session.ask(QUESTION)
        assert not session.wait_for_video()
        ingestor.stop()


def test_a_watched_source_that_fails_before_its_first_frame_says_why(bundled, tmp_path):
    empty = make_zero_frame_video(tmp_path / "empty.mp4")
    with Session(bundled) as session:
        session.watch(str(empty))
        with pytest.raises(NoVideoError, match="empty.mp4 ended after .* without a frame: empty video") as info:
            session.choose(QUESTION, COLOURS)
        assert isinstance(info.value.reason, EmptyVideoError)  # the source's own error is the reason
        assert info.value.__cause__ is info.value.reason


def test_the_first_frame_wait_is_bounded_by_the_deadline_or_the_sources_timeouts(bundled):
    with Session(bundled) as session:
        ingestor = session.watch(SilentCamera())
        assert not session.wait_for_video(0.05)
        with pytest.raises(NoVideoError, match="no frame came from silent-camera within the question's deadline_s"):
            session.ask(QUESTION, deadline_s=0.1)
        with pytest.raises(NoVideoError, match=r"no frame came from silent-camera in the .* since it was watched"):
            session.ask(QUESTION)  # bounded by the source's open + read timeouts (0.5 s) from watch()
        with pytest.raises(NoVideoError, match="silent-camera"):
            session.ask_ids(QUESTION)  # past that bound: at once
        assert session.stats.questions == 0
        ingestor.stop()


def _two_seconds_of_sample(path: Path) -> Path:
    """The sample clip's first 2 s, re-encoded (a real clip shorter than one chunk at --fps 0.5)."""
    with av.open(str(sample_video_path())) as src, av.open(str(path), "w") as out:
        video = src.streams.video[0]
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for frame in src.decode(video):
            if frame.time >= 2.0:
                break
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return path


def test_cli_stats_show_the_pending_frame_the_answer_read(tmp_path):
    clip = _two_seconds_of_sample(tmp_path / "two_seconds.mp4")
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "livevlm.cli", "ask", str(clip), QUESTION, "--fps", "0.5",
                          "--stats", "--no-progress"], capture_output=True, text=True, env=env, timeout=600,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
    assert "frames_seen=1," in res.stderr and "chunks=0, pending_frames=1," in res.stderr  # was: chunks=0 alone
