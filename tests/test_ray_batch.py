"""livevlm.ray.ingest_many on a local Ray cluster: segments fanned out as tasks, merged in order, each answer
equal to a plain `Session` over the same segment; typed errors up front, a failed segment reported in place."""

from __future__ import annotations

import shutil

import pytest

from livevlm import Session, SessionConfig
from livevlm.assets import sample_video_path
from livevlm.errors import ConfigError, ModelLoadError, QuestionError, SourceNotFoundError
from livevlm.models import load_model
from livevlm.stream import FileSource, FileSourceConfig, read_frames

ray = pytest.importorskip("ray")

from livevlm.ray import SegmentResult, ingest_many

QUESTIONS = ("What is happening in the video?", "What colour is the circle?")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def config(tiny_checkpoints) -> SessionConfig:
    return SessionConfig(model=tiny_checkpoints["qwen2_vl"], max_pixels=160 * 28 * 28, max_new_tokens=6)


def _alone(config: SessionConfig, result: SegmentResult) -> dict[str, str]:
    """The answers of a plain Session (same model, loaded here) that ingests only `result`'s segment."""
    adapter = load_model(config.model, device=config.device, dtype=config.dtype)
    source = FileSource(FileSourceConfig(result.source, fps=config.fps, start_seconds=result.start_seconds,
                                         max_frames=result.frames))  # fmt: skip
    with Session(adapter, config) as session:
        assert session.ingest(source) == result.frames
        return {q: "".join(session.ask(q)) for q in QUESTIONS}


def test_mistakes_raise_before_any_task_starts(config, tmp_path):
    # first in this module, so no Ray cluster is up: each mistake must fail in planning, before any task
    clip = sample_video_path()
    with pytest.raises(SourceNotFoundError, match="missing.mp4"):
        ingest_many([clip, tmp_path / "missing.mp4"], QUESTIONS, config=config, progress=False)
    with pytest.raises(SourceNotFoundError, match="no video files"):
        ingest_many(tmp_path, QUESTIONS, config=config, progress=False)
    for seconds in (0, -1, float("nan"), 0.25):  # 0.25 s holds no frame at 2 fps
        with pytest.raises(ConfigError, match="segment_seconds"):
            ingest_many(clip, QUESTIONS, config=config, segment_seconds=seconds, progress=False)
    with pytest.raises(QuestionError):
        ingest_many(clip, [], config=config, progress=False)
    assert not ray.is_initialized()


def test_segments_come_back_in_order_and_answer_like_a_plain_session(ray_cluster, config, tmp_path):
    clip = sample_video_path()  # 8 s at 2 fps: 16 frames
    truncated = tmp_path / "truncated.mp4"  # headers say 8 s, the packets end after ~3.5 s
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    results = ingest_many([clip, truncated], QUESTIONS, config=config, segment_seconds=4, progress=False)

    bounds = [(r.source, r.start_seconds, r.end_seconds) for r in results]
    assert bounds == [(str(clip), 0, 4), (str(clip), 4, 8), (str(truncated), 0, 4), (str(truncated), 4, 8)]
    good, bad = results[:3], results[3]
    assert all(r.ok for r in good)
    assert [r.frames for r in good[:2]] == [8, 8]
    assert sum(r.frames for r in good[:2]) == len(read_frames(clip, fps=config.fps))  # the file, covered
    for r in good:  # each segment's frames lie inside its own stretch
        first, last = r.pts_range
        assert r.start_seconds <= first <= last < r.end_seconds
    assert good[0].pts_range[1] < good[1].pts_range[0]

    assert bad.error is not None and bad.error.startswith("EmptyVideoError")  # reported, not raised
    assert (bad.frames, bad.answers) == (0, {})

    for r in good[:2]:  # token-equal (greedy) to a Session that saw only that segment
        assert r.answers == _alone(config, r)
    assert good[2].answers == good[0].answers  # the truncated copy's first half is the same stretch


def test_a_segment_a_truncated_file_stops_in_says_so(ray_cluster, config, tmp_path):
    clip = sample_video_path()  # 8 s at 2 fps
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 3])  # the packets end inside the first 4 s
    whole, part, after = ingest_many([clip, cut], QUESTIONS[:1], config=config, segment_seconds=4, progress=False)[1:]
    assert whole.shortfall is None and part.ok and 0 < part.frames < 8
    assert part.shortfall is not None and "stopped at" in part.shortfall  # before: nothing told it from a whole one
    assert after.error is not None and after.error.startswith("EmptyVideoError")


def test_a_directory_is_read_in_name_order(ray_cluster, config, tmp_path):
    for name in ("b.mp4", "a.mp4"):
        shutil.copy(sample_video_path(), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a video")
    results = ingest_many(tmp_path, QUESTIONS[:1], config=config, segment_seconds=8, progress=False)
    assert [(r.source, r.frames) for r in results] == [
        (str(tmp_path / "a.mp4"), 16),
        (str(tmp_path / "b.mp4"), 16),
    ]
    assert results[0].answers == results[1].answers


def test_a_mistyped_model_is_one_typed_error_before_any_segment(ray_cluster, config, tmp_path):
    """It started every segment's task and came back with the same ModelLoadError text in each result."""
    clip = sample_video_path()
    wrong = SessionConfig(model=str(tmp_path / "no-such-checkpoint"), max_new_tokens=2)
    with pytest.raises(ModelLoadError, match="no-such-checkpoint") as caught:
        ingest_many([clip, clip], QUESTIONS, config=wrong, segment_seconds=1.0, progress=False)
    assert "Traceback" not in str(caught.value) and "RayTaskError" not in str(caught.value)
