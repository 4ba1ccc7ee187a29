"""Media a user brings that the clean test clips do not: a phone video's rotation, a recording whose clock
starts at an hour (MPEG-TS from a tuner, a remux that kept it), a raw H.264 stream that cannot seek, a camera
URL with a password, and a video with no frame given to `summarize --out`. All through the public API on real
files and real servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from http_files import serving_files
from media import (
    make_anamorphic_clip,
    make_garbage_spliced_copy,
    make_raw_h264_copy,
    make_rotated_copy,
    make_timed_clip,
    make_truncated_copy,
    make_vfr_clip,
    make_zero_frame_video,
)
from rtsp_server import free_port

from livevlm import SessionConfig, summarize
from livevlm.assets import sample_video_path
from livevlm.cli import main
from livevlm.errors import ConfigError, EmptyVideoError, SourceConnectionError, SourceNotFoundError
from livevlm.stream import FileSource, FileSourceConfig, UrlSource, UrlSourceConfig, probe, read_frames
from livevlm.summary import SegmentResult, SummarizeOptions
from livevlm.summary.formats import clocks

SECRET = "s3cret-pw"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


# -- a phone video: landscape pixels and a display rotation -------------------------------------------------


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_rotated_phone_video_is_read_upright(tmp_path: Path, degrees: int) -> None:
    plain = make_timed_clip(tmp_path / "plain.mp4", size=(64, 48))
    phone = make_rotated_copy(plain, tmp_path / "phone.mp4", degrees)  # the same packets, a display matrix
    frames, upright = read_frames(plain, fps=None), read_frames(phone, fps=None)
    assert len(upright) == len(frames) == 20
    turned = (64, 48, 3) if degrees % 180 else (48, 64, 3)  # a quarter turn: portrait, as a player shows
    for a, b in zip(frames, upright):
        assert b.data.shape == turned and b.data.flags.c_contiguous
        np.testing.assert_array_equal(b.data, np.rot90(a.data, degrees // 90))  # counterclockwise: FFmpeg's
    # above the pixel cap the downscale happens first, then the same turn
    with FileSource(FileSourceConfig(phone, fps=None, max_frames=1, max_input_pixels=32 * 24)) as src:
        [small] = list(src)
    assert small.data.shape == ((32, 24, 3) if degrees % 180 else (24, 32, 3))
    assert src.stats.frames_downscaled == 1


# -- anamorphic video: non-square pixels a player stretches --------------------------------------------------


@pytest.mark.parametrize(("aspect", "width"), [(Fraction(2), 128), (Fraction(4, 9), 28), (Fraction(12, 11), 64)])
def test_anamorphic_video_is_read_at_its_display_aspect(tmp_path: Path, aspect: Fraction, width: int) -> None:
    clip = make_anamorphic_clip(tmp_path / "dv.mp4", aspect)  # 64x48 stored, a white band over a quarter
    for src in (FileSource(FileSourceConfig(clip, fps=None)), UrlSource(UrlSourceConfig(f"file://{clip}", fps=None))):
        with src:
            frames = list(src)
        assert len(frames) == 10 and src.stats.frames_downscaled == 0
        for frame in frames:  # before: (48, 64, 3), the picture squeezed or stretched sideways
            assert frame.data.shape == (48, width, 3)  # 12:11 is within any model's own resize: left alone
            band = int((frame.data[24, :, 0] > 128).sum())
            assert abs(band - width / 4) <= 2  # still a quarter of the width, as a player shows it


# -- a recording whose timestamps start late ----------------------------------------------------------------


@pytest.mark.parametrize("container", ["ts", "mkv"])
def test_a_recording_with_a_late_clock_counts_from_its_start(tmp_path: Path, container: str) -> None:
    fmt = "mpegts" if container == "ts" else None
    clip = make_timed_clip(tmp_path / f"rec.{container}", seconds=4.0, fps=10, start=3600.0, format=fmt)
    info = probe(clip)
    assert info.duration_seconds == pytest.approx(4.0)  # Matroska declares its end time (3604 s): the length
    with FileSource(FileSourceConfig(clip, fps=2.0)) as src:
        pts = [f.pts_seconds for f in src]
        assert src.shortfall() is None  # read to the end: nothing missed
    np.testing.assert_allclose(pts, np.arange(8) * 0.5, atol=1e-6)  # 0:00 is the first frame, as in a player
    with FileSource(FileSourceConfig(clip, fps=2.0, start_seconds=2.0)) as src:
        assert [round(f.pts_seconds, 6) for f in src] == [2.0, 2.5, 3.0, 3.5]


def test_summarize_and_ask_within_on_a_late_clock_recording(tmp_path: Path) -> None:
    clip = make_timed_clip(tmp_path / "tuner.ts", seconds=4, size=(96, 64), start=36000, format="mpegts")
    rc, out, err = cli("summarize", str(clip), "--segment", "2", "--format", "vtt", "--no-progress")
    assert rc == 0, err
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)$", out, flags=re.MULTILINE)
    assert cues and cues[0][0] == "00:00:00.000" and all(end <= "00:00:04.000" for _, end in cues), out
    rc, out, err = cli("ask", str(clip), "What colour is the square?", "--kv", "full",
                       "--within", "0:00-0:02", "--no-progress", "--max-new-tokens", "4")  # fmt: skip
    assert rc == 0 and out.strip(), err  # before: "no frame of the stream lies between 0s and 2s"


class Stop(Exception):
    """Stands for Ctrl-C after the first finished segment."""


@pytest.mark.parametrize("kind", ["ts", "h264"])
def test_resumed_summary_of_a_file_without_an_index_equals_an_uninterrupted_run(tmp_path, kind: str) -> None:
    # a keyframe every 2 s: MPEG-TS seeks past the resume point to the next one; raw H.264 cannot seek at all
    clip = make_timed_clip(tmp_path / "rec.ts", seconds=8.0, fps=25, size=(96, 64), start=3600.0, gop=50,
                           format="mpegts")  # fmt: skip
    if kind == "h264":
        clip = make_raw_h264_copy(clip, tmp_path / "rec.h264")
    options = SummarizeOptions(segment=3.0, summary_tokens=8)
    whole = summarize(clip, options=options, out=tmp_path / "whole.json")

    def stop_after_the_first(seg: SegmentResult) -> None:
        if seg.index == 0:
            raise Stop

    with pytest.raises(Stop):
        summarize(clip, options=options, out=tmp_path / "cut.json", on_segment=stop_after_the_first)
    resumed = summarize(clip, options=options, out=tmp_path / "cut.json", resume=True)
    assert resumed.stats["resumed_segments"] == 1

    def frames(result):
        return [(s.index, s.first_pts, s.last_pts, s.frames, s.text) for s in result.segments]

    assert frames(resumed) == frames(whole)  # before: the frames 3.0 and 3.5 were lost after the resume
    assert resumed.stats["frames"] == whole.stats["frames"] == 16


@pytest.mark.parametrize("backend", ["av", "decord"])
def test_a_read_resumed_on_the_whole_reads_grid_picks_and_holds_the_same_frames(tmp_path, backend) -> None:
    clip = make_timed_clip(tmp_path / "slow.mp4", seconds=4.0, fps=2, size=(96, 64))  # frames at 0, 0.5, ...

    def read(**fields):
        with FileSource(FileSourceConfig(clip, fps=2.6, backend=backend, **fields)) as src:
            return [(round(f.pts_seconds, 6), int(f.data[40, 60, 1])) for f in src]

    whole = read()
    assert len(whole) == 10 and len({g for _, g in whole}) == 8  # 2.6 fps over 2 fps: some frames shown twice
    for i in range(len(whole) - 1):
        first, last = whole[0][0], whole[i][0]
        assert read(resume_after=(first, last)) == whole[i + 1 :], last
    assert read(start_seconds=1.2)[0][0] == 1.5  # without the grid: the first frame at or after the start
    for wrong in ((2.0, 1.0), (0.0,), (0.0, float("nan")), (0.0, True), 1.0):
        with pytest.raises(ConfigError, match="resume_after"):
            FileSourceConfig(clip, fps=3.0, resume_after=wrong)
    with pytest.raises(ConfigError, match="one of them"):
        FileSourceConfig(clip, fps=3.0, start_seconds=1.0, resume_after=(0.0, 1.0))


def test_resumed_summary_sampled_faster_than_the_file_equals_an_uninterrupted_run(tmp_path) -> None:
    # a 2 fps file sampled at 5 fps: most instants show the frame held on screen; the resumed read repeats it too
    clip = make_timed_clip(tmp_path / "slow.mp4", seconds=6.0, fps=2, size=(96, 64))
    config = SessionConfig(fps=5.0, max_new_tokens=4)
    options = SummarizeOptions(segment=1.9, summary_tokens=8)  # segment ends fall between the file's frames
    whole = summarize(clip, config=config, options=options, out=tmp_path / "whole.json")

    def stop_after_the_first(seg: SegmentResult) -> None:
        if seg.index == 0:
            raise Stop

    with pytest.raises(Stop):
        summarize(clip, config=config, options=options, out=tmp_path / "cut.json", on_segment=stop_after_the_first)
    resumed = summarize(clip, config=config, options=options, out=tmp_path / "cut.json", resume=True)
    assert resumed.stats["resumed_segments"] == 1

    def frames(result):
        return [(s.index, round(s.first_pts, 6), round(s.last_pts, 6), s.frames) for s in result.segments]

    assert frames(resumed) == frames(whole)  # before: the resumed read gave the file's own 2 frames a second
    assert resumed.stats["frames"] == whole.stats["frames"] == 30


def test_a_damaged_mpeg_ts_recording_is_reported(tmp_path: Path) -> None:
    clip = make_timed_clip(tmp_path / "rec.ts", seconds=6.0, size=(160, 120), format="mpegts")
    damaged = make_garbage_spliced_copy(clip, tmp_path / "damaged.ts")  # 5 % of the bytes overwritten mid-file
    with FileSource(FileSourceConfig(damaged, fps=None)) as src:
        frames = list(src)
    assert 0 < len(frames) < 60  # the demuxer dropped the damaged stretch and resynced ...
    assert src.stats.frames_corrupt >= 1 and "corrupt packet" in (src.shortfall() or "")  # ... and says so
    rc, out, err = cli("ask", str(damaged), "What colour is the square?", "--no-progress", "--max-new-tokens", "2")
    assert rc == 0 and out.strip()
    assert f"livevlm: warning: {damaged}: " in err and "corrupt packet" in err  # before: no warning at all


def test_a_matroska_file_with_a_damaged_middle_counts_the_frames_lost(tmp_path: Path) -> None:
    clip = make_timed_clip(tmp_path / "rec.mkv", seconds=6.0, size=(160, 120))
    damaged = make_garbage_spliced_copy(clip, tmp_path / "damaged.mkv")  # the demuxer resyncs a cluster later
    for backend in ("av", "decord"):  # decord would drop them uncounted: PyAV reads the file instead
        with FileSource(FileSourceConfig(damaged, fps=None, backend=backend)) as src:
            frames = list(src)
        assert src.backend == "av" and len(frames) == 42  # 2.2 s to 3.9 s vanished ...
        assert src.stats.frames_lost == 18 and src.stats.last_loss == pytest.approx((2.1, 4.0))  # ... and counted
        assert "about 18 frames lost to damaged data" in (src.shortfall() or "")  # before: "1 corrupt packet"
    with FileSource(FileSourceConfig(damaged, fps=2.0, start_seconds=1.0)) as src:  # after a seek too
        assert len(list(src)) == 10 and src.stats.frames_lost == 18  # 2.1 s held over the hole, as a player
    still = make_vfr_clip(tmp_path / "still.mkv", [0.0, 0.1, 0.2, 2.0, 2.1, 5.0, 5.1])  # holes, nothing lost
    with FileSource(FileSourceConfig(still, fps=None)) as src:
        assert len(list(src)) == 7 and src.stats.frames_lost == 0 and src.shortfall() is None
    with FileSource(FileSourceConfig(clip, fps=None)) as src:
        assert len(list(src)) == 60 and src.stats.frames_lost == 0 and src.shortfall() is None


def test_start_seconds_on_a_stream_that_cannot_seek_reads_from_there(tmp_path: Path) -> None:
    raw = make_raw_h264_copy(make_timed_clip(tmp_path / "c.mp4", seconds=3.0, fps=25), tmp_path / "c.h264")
    with FileSource(FileSourceConfig(raw, fps=2.0, start_seconds=1.0)) as src:  # before: SourceError
        assert [round(f.pts_seconds, 6) for f in src] == [1.0, 1.52, 2.0, 2.52]  # frames every 0.04 s


# -- a camera URL with a password ---------------------------------------------------------------------------


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with serving_files(root) as url:
        yield int(url.rsplit(":", 1)[1]), root


def test_a_password_in_a_url_never_reaches_errors_stats_or_frames(www: tuple[int, Path]) -> None:
    port, root = www
    make_timed_clip(root / "clip.mp4", seconds=1.0)
    url = f"http://viewer:{SECRET}@127.0.0.1:{port}/clip.mp4"
    with UrlSource(UrlSourceConfig(url, fps=2.0)) as src:
        frames = list(src)
    assert len(frames) == 2 and src.source_id == f"http://viewer:***@127.0.0.1:{port}/clip.mp4"
    assert all(SECRET not in f.source_id for f in frames) and SECRET not in repr(src)
    with pytest.raises(SourceNotFoundError) as missing:
        UrlSource(UrlSourceConfig(url.replace("clip.mp4", "gone.mp4")))
    with pytest.raises(SourceConnectionError) as refused:
        UrlSource(UrlSourceConfig(f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam"))
    for error in (missing.value, refused.value):
        assert SECRET not in str(error) and "***@127.0.0.1" in str(error)
        logged = "".join(traceback.format_exception(error))  # what logger.exception prints
        assert SECRET not in logged and error.__cause__ is None and error.__context__ is None, logged
    rc, out, err = cli("ask", f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam", "q")
    assert rc == 2 and "***@127.0.0.1" in err and SECRET not in err + out


@pytest.mark.parametrize("stream", [f"https://u:{SECRET}@example.com/talk.mp4", "lavfi:testsrc2", "webcam:0"])
def test_summarize_of_a_stream_says_it_reads_files(stream: str) -> None:
    rc, out, err = cli("summarize", stream)  # before: "video file not found: https:/u:s3cret-pw@example.com/..."
    assert rc == 2 and out == ""
    assert "summarize reads a video file" in err and "livevlm watch" in err and SECRET not in err
    assert stream.replace(SECRET, "***") in err  # the URL as given, its '//' intact


# -- summarize --out of a video with no frame ---------------------------------------------------------------


def test_a_failed_summary_leaves_no_resume_state_to_trip_the_next_run(tmp_path: Path) -> None:
    empty = make_zero_frame_video(tmp_path / "empty.mp4")
    out = tmp_path / "notes.md"
    for _ in range(2):  # before: the second run was refused ("holds an interrupted summarize run")
        with pytest.raises(EmptyVideoError):
            summarize(empty, out=out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp4"]
    good = make_timed_clip(tmp_path / "good.mp4", seconds=2.0, size=(96, 64))
    assert summarize(good, options=SummarizeOptions(segment=1.0, summary_tokens=4), out=out).segments
    assert out.read_text().startswith("# Summary of good.mp4")
    assert not (tmp_path / "notes.md.partial").exists()


def test_a_short_last_segment_is_labelled_within_the_video(tmp_path: Path) -> None:
    clip = make_timed_clip(tmp_path / "five.mp4", seconds=5.2, size=(96, 64))
    rc, out, err = cli("summarize", str(clip), "--segment", "5", "--format", "json")
    assert rc == 0, err
    assert [(s["start"], s["end"]) for s in json.loads(out)["segments"]] == [(0.0, 5.0), (5.0, 5.2)]  # before: 5.5
    assert "[0:05.0-0:05.2] " in err  # the segment's progress line; before: '[0:05-0:05]'
    assert clocks(5.0, 5.2) == ("0:05.0", "0:05.2") and clocks(5.0, 10.0) == ("0:05", "0:10")  # chapter titles


# -- a source that ends before its first frame --------------------------------------------------------------


def test_ask_over_a_url_with_no_frame_says_so(www: tuple[int, Path], tmp_path: Path) -> None:
    port, root = www
    make_zero_frame_video(root / "empty.mp4")
    url = f"http://127.0.0.1:{port}/empty.mp4"
    with pytest.raises(EmptyVideoError, match="ended without a frame"), UrlSource(UrlSourceConfig(url)) as src:
        list(src)
    rc, out, err = cli("ask", url, "What colour is the square?", "--no-progress")
    assert rc != 0 and out == "" and "ended without a frame" in err  # before: an answer about no video at all
    clip = make_timed_clip(tmp_path / "c.mp4", seconds=1.0, size=(96, 64))
    rc, out, err = cli("ask", f"file://{clip}", "What colour is the square?", "--no-progress",
                       "--max-new-tokens", "2")  # fmt: skip
    assert rc == 0 and out.strip(), err  # before: "video file not found: file:/tmp/..."


def test_watch_names_a_url_cut_short_without_its_password(www: tuple[int, Path]) -> None:
    """The warning after the file ended printed the URL as typed, password and all."""
    port, root = www
    make_truncated_copy(sample_video_path(), root / "cut.mp4", 0.5)
    res = subprocess.run([sys.executable, "-m", "livevlm", "watch", f"http://viewer:{SECRET}@127.0.0.1:{port}/cut.mp4",
                          "--fast"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    rc, out, err = res.returncode, res.stdout, res.stderr
    assert rc == 0 and "livevlm: warning: http://viewer:***@127.0.0.1" in err and "stopped at" in err, err
    assert SECRET not in err + out


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://127.0.0.1:1/stream?user=admin&password=SECRET&ch=1", "?user=admin&password=***&ch=1"),
    ("https://cam.example/live.m3u8?token=SECRET", "?token=***"),
    ("rtsp://admin:SECRET@cam/x?pwd=SECRET", "rtsp://admin:***@cam/x?pwd=***"),
])  # fmt: skip
def test_credentials_in_the_query_string_are_redacted_too(url: str, shown: str) -> None:
    from livevlm.stream.url import redact

    assert shown in redact(url) and "SECRET" not in redact(url)


def test_an_upper_case_scheme_opens(www: tuple[int, Path]) -> None:
    """'HTTP://...' was 'Protocol not found' (FFmpeg's protocol names are lower case; URL schemes are not)."""
    port, root = www
    make_timed_clip(root / "clip.mp4", seconds=1.0)
    with UrlSource(UrlSourceConfig(f"HTTP://127.0.0.1:{port}/clip.mp4", fps=2.0)) as src:
        assert len(list(src)) == 2
