"""A frame pushed into a `PushSource` is copied once, as it is pushed (a loop may refill one camera buffer), and
the session that takes it from the source keeps that copy: no second one. Anything else given to a session
(an array of the caller's, a frame taken a second time) is still copied.

Real frames: the bundled sample clip through the bundled model."""

from __future__ import annotations

import numpy as np
import pytest

from livevlm import PushSource, Session, SessionConfig, load_model
from livevlm.assets import sample_video_path
from livevlm.stream import read_frames

QUESTION, CHOICES = "What colour is the circle?", ["red", "green", "blue"]
HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def pixels() -> list[np.ndarray]:
    return [f.data for f in read_frames(sample_video_path(), fps=2.0)]


def _pushed(pixels: list[np.ndarray]) -> tuple[PushSource, np.ndarray]:
    """A PushSource holding every frame, each pushed from one buffer the loop refills, and that buffer."""
    camera, buffer = PushSource(capacity=len(pixels)), np.empty_like(pixels[0])
    for i, frame in enumerate(pixels):
        np.copyto(buffer, frame)
        camera.push(buffer, pts_seconds=i / 2)
    camera.end()
    return camera, buffer


def test_a_session_keeps_the_copy_the_push_made(model, pixels) -> None:
    camera, buffer = _pushed(pixels)
    with Session(model, SessionConfig(fps=2.0)) as session, Session(model, SessionConfig(fps=2.0)) as again:
        for frame, expected in zip(camera, pixels, strict=True):
            assert not np.shares_memory(frame.data, buffer)  # the push copied the caller's buffer
            session.push(frame)
            assert session.latest_frame.data is frame.data  # ... and the session took that copy as it is
            again.push(frame)  # the same frame a second time: copied, the first session owns it
            assert not np.shares_memory(again.latest_frame.data, frame.data)
            np.testing.assert_array_equal(session.latest_frame.data, expected)
        assert session.stats.frames_seen == len(pixels) and session.stats.chunks == len(pixels) // 2


def test_a_callers_array_pushed_straight_into_a_session_is_still_copied(model, pixels) -> None:
    with Session(model, SessionConfig(fps=2.0)) as session:
        mine = pixels[0].copy()
        session.push(mine)
        assert not np.shares_memory(session.latest_frame.data, mine)


def test_a_watched_refilled_buffer_answers_as_fresh_frames_do(model, pixels) -> None:
    def probabilities(refill: bool) -> dict[str, float]:
        with Session(model, SessionConfig(fps=2.0)) as session:
            if refill:
                camera, _ = _pushed(pixels)
            else:
                camera = PushSource(capacity=len(pixels))
                for i, frame in enumerate(pixels):
                    camera.push(frame.copy(), pts_seconds=i / 2)
                camera.end()
            assert session.watch(camera).wait(HANG_GUARD) and session.stats.frames_seen == len(pixels)
            return session.choose(QUESTION, CHOICES).probabilities

    assert probabilities(refill=True) == probabilities(refill=False)
