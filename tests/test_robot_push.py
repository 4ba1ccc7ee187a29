"""A robot's own loop feeding the session: frames pushed from its threads into a `PushSource` (or `push()`),
scored answers with numpy times and deadlines, and snapshots it saves and loads back.

Everything runs on the bundled model over the bundled sample clip (a red circle, then shapes appear), pushed
frame by frame as a camera loop would; assertions are about answers and counters, never timing.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading

import numpy as np
import pytest

from livevlm import PushSource, Session, SessionConfig, load_model
from livevlm.assets import sample_video_path
from livevlm.errors import ConfigError, FrameError, QuestionError, SnapshotError
from livevlm.stream import read_frames

QUESTION, CHOICES = "What colour is the circle?", ["red", "green", "blue"]
HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def yardstick():
    """The bundled default model, loaded once in float32 through the normal path."""
    return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def pixels() -> list[np.ndarray]:
    """The bundled sample at 2 fps: 16 RGB uint8 frames of 336x336."""
    return [f.data for f in read_frames(sample_video_path(), fps=2.0)]


def _watched(model, pixels: list[np.ndarray], refill: bool) -> dict[str, float]:
    """Push `pixels` through a watched PushSource, each a fresh array or (`refill`) one buffer the loop refills
    like a camera driver; the scored answer's probabilities once every frame is in."""
    with Session(model, SessionConfig(fps=2.0)) as session:
        camera = PushSource(capacity=len(pixels))  # room for all: nothing is dropped
        ingest = session.watch(camera)
        buffer = np.empty_like(pixels[0])
        for i, frame in enumerate(pixels):
            if refill:
                np.copyto(buffer, frame)
            camera.push(buffer if refill else frame.copy(), pts_seconds=i / 2)
        camera.end()
        assert ingest.wait(HANG_GUARD) and session.stats.frames_seen == len(pixels)
        return session.choose(QUESTION, CHOICES).probabilities


def test_a_refilled_camera_buffer_is_copied_as_it_is_pushed(yardstick, pixels) -> None:
    assert _watched(yardstick, pixels, refill=True) == _watched(yardstick, pixels, refill=False)


def test_default_times_follow_the_queue_when_several_threads_push() -> None:
    """Four threads push at once, two of them frames big enough to be downscaled on the way in (the slow part):
    each frame's default time must still be later than the one queued before it, or the session refuses it."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race shows within a few hundred frames
    try:
        camera = PushSource(capacity=4 * 300, max_input_pixels=64 * 64)
        big, small = np.zeros((256, 256, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
        threads = [threading.Thread(target=lambda a=a: [camera.push(a) for _ in range(300)])
                   for a in (big, small, big, small)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD)
    finally:
        sys.setswitchinterval(interval)
    camera.end()
    times = [f.pts_seconds for f in camera]
    assert len(times) == 4 * 300 and camera.stats.frames_downscaled == 2 * 300
    assert all(b > a for a, b in itertools.pairwise(times)), "a frame was queued behind a later time"


def test_numpy_seconds_work_as_deadlines_and_intervals(yardstick, pixels) -> None:
    """Times in a robot's loop are often numpy scalars (np.float32 from a sensor message)."""
    with Session(yardstick, SessionConfig(fps=2.0)) as session:
        for i, frame in enumerate(pixels[:4]):
            session.push(frame, pts_seconds=np.float32(i / 2))
        answer = "".join(session.ask(QUESTION, deadline_s=np.float32(30)))
        assert session.choose(QUESTION, CHOICES, deadline_s=np.float32(30)).choice == answer == "red"
        with session.watch_for(QUESTION, choices=CHOICES, every_s=np.float32(0.05), deadline_s=np.float32(30)) as q:
            assert q.wait_answered(session.stats.chunks, HANG_GUARD) and q.error is None
            assert q.last.answer == "red"
        assert "".join(session.ask(QUESTION, deadline_s=1e300)) == "red"  # huge but finite: no overflow
        for bad in (float("inf"), float("nan"), True, np.float32(-1)):
            with pytest.raises(QuestionError):
                session.ask(QUESTION, deadline_s=bad)
            with pytest.raises(QuestionError):
                session.watch_for(QUESTION, every_s=bad)
        assert session.stats.standing.started == 1


def test_a_manifest_missing_its_config_or_model_is_a_snapshot_error(yardstick, pixels, tmp_path) -> None:
    with Session(yardstick, SessionConfig(fps=2.0)) as session:
        for i, frame in enumerate(pixels[:5]):
            session.push(frame, pts_seconds=i / 2)
        expected = session.choose(QUESTION, CHOICES).probabilities
        session.save(tmp_path / "snap")
    restored = Session.load(tmp_path / "snap", yardstick)
    with restored:  # the untouched snapshot loads and answers alike
        assert restored.choose(QUESTION, CHOICES).probabilities == expected
    manifest_path = tmp_path / "snap" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for broken in ({k: v for k, v in manifest.items() if k != "config"}, {**manifest, "model": "qwen"},
                   {**manifest, "config": None}):  # fmt: skip
        manifest_path.write_text(json.dumps(broken))
        with pytest.raises(SnapshotError, match="corrupt"):
            Session.load(tmp_path / "snap", yardstick)


def test_a_refilled_buffer_given_to_session_push_is_copied(yardstick, pixels) -> None:
    def probabilities(refill: bool) -> dict[str, float]:
        with Session(yardstick, SessionConfig(fps=2.0)) as session:
            buffer = np.empty_like(pixels[0])
            for i, frame in enumerate(pixels):
                if refill:
                    np.copyto(buffer, frame)
                session.push(buffer if refill else frame.copy(), pts_seconds=i / 2)
            return session.choose(QUESTION, CHOICES).probabilities

    assert probabilities(refill=True) == probabilities(refill=False)


def test_a_second_source_is_refused_while_the_first_is_watched(yardstick) -> None:
    """close() stops the watched source; a second watch() would have run on after it, unstopped."""
    session = Session(yardstick, SessionConfig(fps=2.0))
    first = session.watch(PushSource(source_id="cam_a"))
    with pytest.raises(ConfigError, match="already watches cam_a"):
        session.watch(PushSource(source_id="cam_b"))
    with pytest.raises(ConfigError, match="already watches cam_a"):
        session.push(np.zeros((64, 64, 3), np.uint8), block=False)  # its buffer is a watched source too
    first.stop()
    second = session.watch(PushSource(source_id="cam_b"))  # the first one ended: a new source may follow
    session.close()
    assert second.wait(HANG_GUARD) and not any(t.name.startswith("livevlm-ingest") for t in threading.enumerate())


def test_the_usual_wrong_frame_layouts_are_refused_with_the_fix(yardstick) -> None:
    """Grayscale, RGBA, channels-first and float frames: a typed error that says how to make RGB uint8."""
    with Session(yardstick, SessionConfig(fps=2.0)) as session:
        for frame, fix in [(np.zeros((96, 128), np.uint8), r"np.repeat"), (np.zeros((96, 128, 4), np.uint8), r"\[\.\.\., :3\]"),
                           (np.zeros((3, 96, 128), np.uint8), "transpose"), (np.zeros((96, 128, 3), np.float32), r"\* 255")]:  # fmt: skip
            with pytest.raises(FrameError, match=fix):
                session.push(frame)
        assert session.stats.frames_rejected == 4 and session.stats.frames_seen == 0


def test_a_full_context_growing_past_the_model_is_said_once(yardstick, pixels, caplog) -> None:
    """kv='full' (the default) keeps every frame: a robot loop pushing for ever is told when a question can no
    longer read the whole stream, once; what was pushed stays and within= still answers over part of it."""
    max_context = yardstick.max_context
    with Session(yardstick, SessionConfig(fps=2.0)) as session, caplog.at_level("WARNING", logger="livevlm"):
        t = 0.0
        while session.stats.kv_tokens <= max_context + 200:
            for frame in pixels:
                session.push(frame, pts_seconds=t)
                t += 0.5
        said = [r.getMessage() for r in caplog.records if "longer than the model's" in r.getMessage()]
        assert len(said) == 1 and "bounded kv policy" in said[0]
        assert "".join(session.ask(QUESTION, within=(0.0, 7.5))) == "red"
