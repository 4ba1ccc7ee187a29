"""More mistakes a stranger made through the Python API (session 23's try-out), each a typed error at the call
that names the fix, with nothing ingested lost. Real tiny checkpoints of the real architectures; no mocks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import livevlm
from livevlm import (
    ConfigError,
    ContextOverflowError,
    FrameError,
    PushSource,
    QuestionError,
    Session,
    SessionClosedError,
    SessionConfig,
    SnapshotError,
)
from livevlm.assets import sample_video_path
from livevlm.stream import read_frames

QUESTION = "What colour is the circle?"
HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def frames() -> list:
    return read_frames(sample_video_path(), fps=2.0, max_frames=4)


@pytest.fixture
def session(tiny_adapters, frames):
    with Session(tiny_adapters["qwen2_5_vl"]) as s:
        s.ingest(frames)
        yield s


@pytest.mark.parametrize("model", [SessionConfig(fps=1.0), {"fps": 2.0}, 123, b"/some/checkpoint"])
def test_something_that_is_not_a_model_where_the_model_goes_is_a_config_error(model) -> None:
    """`Session(SessionConfig(...))` was an AttributeError ('kv_layout') from deep in the session."""
    with pytest.raises(ConfigError, match=f"model must be a checkpoint path.* not {type(model).__name__}"):
        Session(model)  # type: ignore[arg-type]


def test_a_config_given_first_is_told_to_go_second() -> None:
    with pytest.raises(ConfigError, match=r"the config goes second, Session\(model, config\)"):
        Session(SessionConfig(fps=1.0))  # type: ignore[arg-type]


def test_load_refuses_a_config_as_the_model_too(session, tmp_path: Path) -> None:
    session.save(tmp_path / "snap")
    with pytest.raises(ConfigError, match="not SessionConfig"):
        Session.load(tmp_path / "snap", SessionConfig())  # type: ignore[arg-type]


def test_no_video_error_is_part_of_the_public_api(tiny_adapters) -> None:
    """The README tells users to catch it; `livevlm.NoVideoError` was an AttributeError."""
    assert "NoVideoError" in livevlm.__all__
    with Session(tiny_adapters["qwen2_5_vl"]) as s, pytest.raises(livevlm.NoVideoError):
        s.ask(QUESTION)


def test_a_regex_no_answer_can_match_is_refused_at_the_call(session) -> None:
    """It was a RuntimeError with the matcher's state dump, at the first token."""
    with pytest.raises(ConfigError, match=r"regex '\[\^\\\\s\\\\S\]' matches no answer the model can write"):
        session.ask(QUESTION, regex=r"[^\s\S]")
    assert "".join(session.ask(QUESTION, 4, regex="(red|blue)")) in ("red", "blue")  # the session goes on


@pytest.mark.parametrize("choices", [["red", None], [1, 2], ("red", b"blue")])
def test_choices_that_are_not_strings_are_refused(session, choices) -> None:
    """They were turned into text ("None", "2") and scored."""
    with pytest.raises(QuestionError, match="choices must be strings, got"):
        session.ask(QUESTION, choices=choices)
    with pytest.raises(QuestionError, match="choices must be strings, got"):
        session.choose(QUESTION, choices)


def test_choices_from_a_generator_still_work(session) -> None:
    assert session.choose(QUESTION, (c for c in ("red", "blue"))).choice in ("red", "blue")


@pytest.mark.parametrize(("question", "budget"), [("why " * 5000, 8), (QUESTION, 10**9)])
def test_a_question_or_budget_too_big_for_any_policy_names_itself(session, question, budget) -> None:
    """The overflow error suggested a bounded KV policy, which cannot help a question or budget this big."""
    with pytest.raises(ContextOverflowError, match="shorten the question or lower max_new_tokens") as caught:
        session.ask(question, budget)
    assert "bilevel" not in str(caught.value)


def test_a_stream_too_long_for_kv_full_still_suggests_a_bounded_policy(tiny_adapters, frames) -> None:
    adapter = tiny_adapters["qwen2_5_vl"]
    with Session(adapter) as s:
        s.ingest(frames)
        used = s.stats.kv_tokens
        with pytest.raises(ContextOverflowError, match="bounded KV policy"):
            s.ask(QUESTION, adapter.max_context - used - 2)  # fits with no video, not with this stream's


def test_an_answer_closed_early_says_so(session) -> None:
    answer = session.ask("Describe the video.", 16)
    next(answer)
    assert answer.finish_reason == "running"
    answer.close()
    assert answer.finish_reason == "closed"
    finished = session.ask(QUESTION, 1)
    list(finished)
    finished.close()  # closing a finished answer keeps its reason
    assert finished.finish_reason in ("stop", "length")


@pytest.mark.parametrize("path", ["", "   ", None, b"snap"])
def test_a_snapshot_path_that_is_not_one_is_refused(session, path) -> None:
    """`save("")` meant the current directory (an empty one was swapped out from under the process)."""
    with pytest.raises(SnapshotError, match="a snapshot path must"):
        session.save(path)  # type: ignore[arg-type]
    with pytest.raises(SnapshotError, match="a snapshot path must"):
        Session.load(path)  # type: ignore[arg-type]


def test_the_current_directory_is_never_replaced_by_a_snapshot(session, tmp_path: Path, monkeypatch) -> None:
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    for path in (".", here, tmp_path):
        with pytest.raises(SnapshotError, match="is the current directory or holds it"):
            session.save(path)
    assert Path(os.getcwd()) == here and here.is_dir() and not any(here.iterdir())
    info = session.save("snap")  # a directory inside it is fine
    assert info.path == here / "snap" and (here / "snap").is_dir()


@pytest.mark.parametrize(("pts", "says"), [("0.25", "got str"), (True, "got bool"), (float("nan"), "finite")])
def test_a_push_source_refuses_a_time_that_is_not_one_at_push(tiny_adapters, frames, pts, says) -> None:
    """They were turned into floats (True was 1.0 and took the next real frame's place)."""
    source = PushSource()
    with Session(tiny_adapters["qwen2_5_vl"]) as s:
        ingestor = s.watch(source)
        with pytest.raises(FrameError, match=f"pts_seconds must be .*{says}"):
            source.push(frames[0].data, pts)
        assert source.stats.frames_rejected == 1
        for frame in frames:
            assert source.push(frame.data, frame.pts_seconds)
        source.end()
        assert ingestor.wait(60)
        assert s.stats.frames_seen == len(frames) and s.stats.frames_rejected == 0  # every real frame taken


def test_a_push_source_refuses_a_tiny_frame_at_push(tiny_adapters, frames) -> None:
    """A 1x1 frame was accepted (True) and refused later on the ingestion thread, seen only as a count."""
    source = PushSource()
    with Session(tiny_adapters["qwen2_5_vl"]) as s:
        s.watch(source)
        with pytest.raises(FrameError, match="too small: each side must be >= 16"):
            source.push(np.zeros((1, 1, 3), np.uint8), 0.0)
        assert source.push(frames[0].data, 0.0)


def test_wait_for_video_after_close_raises(tiny_adapters, frames) -> None:
    s = Session(tiny_adapters["qwen2_5_vl"])
    s.ingest(frames)
    s.close()
    with pytest.raises(SessionClosedError):
        s.wait_for_video(0)


def test_a_question_after_every_pushed_frame_was_refused_says_why(tiny_adapters) -> None:
    """It said 'no frame has been pushed' though frames were: the session refused them (here: a 312:1 aspect)."""
    source = PushSource()
    with Session(tiny_adapters["qwen2_5_vl"]) as s:
        ingestor = s.watch(source)
        for i in range(3):
            assert source.push(np.zeros((16, 5000, 3), np.uint8), i * 0.5)
        deadline = time.monotonic() + HANG_GUARD
        while ingestor.stats.frames_rejected < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "aspect ratio" in ingestor.stats.last_rejection
        why = r"frame of 5000x16 pixels has an aspect ratio of 312.5:1"
        with pytest.raises(livevlm.NoVideoError, match=rf"the 3 frames pushed .* were all refused \(the last: {why}"):
            s.ask(QUESTION)
        source.end()
        assert ingestor.wait(HANG_GUARD)
        with pytest.raises(livevlm.NoVideoError, match=rf"ended .* without a frame \(3 frames refused; the last: {why}"):
            s.ask(QUESTION)


def test_batches_of_a_robot_clock_keep_their_times(tiny_adapters, frames) -> None:
    """A robot's 30 Hz frames ingested ten at a time (or pushed without blocking after blocking pushes) were moved
    a sampling period after the stream's last frame, each batch drifting 0.47 s, and `within=` read other frames."""
    from livevlm import Frame

    pictures = [f.data for f in frames]
    times = [round(i / 30, 4) for i in range(30)]
    with Session(tiny_adapters["qwen2_5_vl"], SessionConfig(max_new_tokens=2)) as session:
        for batch in range(3):
            session.ingest(Frame(pictures[i % 4], t) for i, t in enumerate(times[batch * 10 : batch * 10 + 10]))
            assert session.stats.last_pts_seconds == times[batch * 10 + 9]  # before: 0.3, 1.1, 1.9
        answer = session.ask(QUESTION, within=(0.5, 0.75))
        "".join(answer)
        assert 0.4 < answer.pts_range[0] <= 0.5 and 0.75 <= answer.pts_range[1] < 0.85, answer.pts_range  # whole chunks
        session.ingest([Frame(pictures[0], 0.0)])  # a new clip from 0: not after the last frame, so it follows it
        assert session.stats.last_pts_seconds == pytest.approx(times[-1] + 1 / session.config.fps)
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        for t in (0.0, 0.5, 1.0, 1.5):
            session.push(pictures[0], t)
        session.push(pictures[1], 1.6, block=False)
        session.push(pictures[2], 1.7, block=False)
        deadline = time.monotonic() + HANG_GUARD
        while session.stats.frames_seen < 6 and time.monotonic() < deadline:  # ingested by the background thread
            time.sleep(0.01)
        assert session.stats.last_pts_seconds == 1.7  # before: 2.1


@pytest.mark.parametrize("kv", ["full", "bilevel"])
def test_within_over_frames_dedup_skipped_reads_the_chunk_standing_for_them(tiny_adapters, frames, tmp_path, kv) -> None:
    """A robot parked before an unchanged scene, asking about the last second: dedup stored nothing for those
    frames, and within= said "no frame of the stream lies between 2.5s and 3.5s" though 8 frames came."""
    from livevlm.prune import parse_prune_spec

    config = SessionConfig(prune=parse_prune_spec("dedup"), max_new_tokens=2, kv=kv)
    still, moved = frames[0].data, frames[3].data
    with Session(tiny_adapters["qwen2_5_vl"], config) as session:
        for i in range(8):
            session.push(still, i * 0.5)
        assert session.stats.prune.chunks_skipped == 3
        answer = session.ask(QUESTION, within=(2.5, 3.5))
        assert "".join(answer) is not None and answer.pts_range == (0.0, 0.5) and answer.chunks == 1  # the stand-in
        for i in range(8, 10):
            session.push(moved, i * 0.5)  # the scene changed: a chunk of its own
        answer = session.ask(QUESTION, within=(4.0, 4.5))
        "".join(answer)
        assert answer.pts_range == (4.0, 4.5) and answer.chunks == 1  # a range of stored frames reads them alone
        session.save(tmp_path / "parked")
    with Session.load(tmp_path / "parked", tiny_adapters["qwen2_5_vl"]) as restored:
        answer = restored.ask(QUESTION, within=(2.5, 3.5))
        "".join(answer)
        assert answer.pts_range == (0.0, 0.5)


@pytest.mark.parametrize("bounds", [{"max_pixels": -5}, {"min_pixels": 10}, {"max_pixels": 1.5e6},
                                    {"min_pixels": 200_000, "max_pixels": 100_000}])  # fmt: skip
def test_load_model_refuses_pixel_bounds_that_are_not_ones(tiny_checkpoints, bounds) -> None:
    with pytest.raises(ConfigError, match="pixels"):  # max_pixels=-5 was a ValueError "math domain error" at the first push
        livevlm.load_model(tiny_checkpoints["qwen2_5_vl"], **bounds)


def test_a_refused_huge_first_frame_is_named_as_it_was_given(tiny_adapters) -> None:
    """A 16x2,000,000 frame is downscaled (area) before the model sizes it; the refusal described the downscaled
    frame (1414213x11 pixels), a size the caller never gave."""
    with Session(tiny_adapters["qwen2_5_vl"]) as s:
        with pytest.raises(livevlm.FrameError, match=r"frame of 2000000x16 pixels has an aspect ratio of 125000.0:1"):
            s.push(np.zeros((16, 2_000_000, 3), np.uint8))
        with pytest.raises(livevlm.FrameError, match=r"frame of 2000000x16 pixels"):
            s.check_first_frame_size(16, 2_000_000)
        assert s.stats.frames_rejected == 1
