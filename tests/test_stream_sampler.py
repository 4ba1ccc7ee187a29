"""Timestamps: the stream clock (gaps, wrap-around, resets, reconnects), fps sampling, real-time pacing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from media import make_lavfi_clip, make_vfr_clip, make_wrapping_ts_clip

from livevlm.stream import FileSource, FileSourceConfig, Pacer, Sampler, Timeline, UrlSource, UrlSourceConfig

TS_WRAP = 2**33 / 90_000


def test_timeline_keeps_gaps_and_holds_jitter() -> None:
    clock = Timeline()
    assert [clock(t) for t in (0.0, 0.1, 5.0, 5.1, 5.05, 5.2)] == [0.0, 0.1, 5.0, 5.1, 5.1, 5.2]
    assert clock.resets == 0


def test_timeline_unwraps_counter_wrap_around() -> None:
    clock = Timeline(wrap_seconds=TS_WRAP)
    raw = [TS_WRAP - 0.2, TS_WRAP - 0.1, 0.0, 0.1, 0.2]
    assert np.allclose(
        [clock(t) for t in raw], [TS_WRAP - 0.2, TS_WRAP - 0.1, TS_WRAP, TS_WRAP + 0.1, TS_WRAP + 0.2]
    )
    assert clock.wraps == 1 and clock.resets == 0


def test_timeline_rebases_a_reset_after_the_last_time() -> None:
    clock = Timeline(start=0.0, period=0.1)
    out = [clock(t) for t in (100.0, 100.1, 100.2, 3.0, 3.1)]  # the encoder restarted its clock
    assert np.allclose(out, [0.0, 0.1, 0.2, 0.3, 0.4]) and clock.resets == 1


def test_timeline_rebase_starts_a_segment_and_tick_covers_missing_pts() -> None:
    clock = Timeline(start=0.0, period=0.1)
    assert clock.tick() == 0.0  # first frame without a pts
    assert [clock(t) for t in (7.1, 7.2)] == pytest.approx([0.1, 0.2])
    clock.rebase(5.0)  # a reconnect 5 s after the first frame
    assert clock.tick() == 5.0
    assert [clock(t) for t in (0.1, 0.2)] == pytest.approx([5.1, 5.2])
    clock.rebase(1.0)  # never before the last time
    assert clock(0.0) == pytest.approx(5.3)


def test_sampler_instants() -> None:
    sampler = Sampler(2.0)
    times = [0.0, 0.1, 0.15, 0.9, 1.0, 2.5, 2.6, 3.0]
    assert [t for t in times if sampler.keep(t)] == [0.0, 0.9, 1.0, 2.5, 3.0]
    every = Sampler(None)
    assert all(every.keep(t) for t in times)
    late = Sampler(1.0, start=2.0)
    assert [t for t in times if late.keep(t)] == [2.5]


def _reader(kind: str, path: Path, fps: float):
    if kind == "url":
        return UrlSource(UrlSourceConfig(f"file://{path}", fps=fps))
    return FileSource(FileSourceConfig(path, fps=fps, backend=kind))


@pytest.mark.parametrize("kind", ["av", "decord", "url"])
def test_variable_frame_rate_and_pts_gap_files(tmp_path: Path, kind: str) -> None:
    # file reads (PyAV, decord, and a URL to a file that declares its duration alike) hold the frame on screen over
    # instants no frame reaches, as a player and ffmpeg's fps filter do
    vfr = make_vfr_clip(tmp_path / "vfr.mp4", [0.0, 0.1, 0.15, 0.9, 1.0, 2.5, 2.6])
    with _reader(kind, vfr, 2.0) as src:
        assert [f.pts_seconds for f in src] == pytest.approx([0.0, 0.9, 1.0, 1.5, 2.0, 2.5])
    times = [k / 10 for k in range(11)] + [4.0 + k / 10 for k in range(11)]  # 1 s, a 3 s hole, 1 s
    gap = make_vfr_clip(tmp_path / "gap.mp4", times)
    with _reader(kind, gap, 4.0) as src:
        frames = list(src)
    hole = [1.25 + 0.25 * k for k in range(11)]
    assert [f.pts_seconds for f in frames] == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.0, *hole, 4.0, 4.3, 4.5, 4.8, 5.0])
    after = 5 + len(hole)  # the first real frame after the hole differs from the one held across it
    assert int(frames[after].data[0, 0, 0]) != int(frames[after - 1].data[0, 0, 0])


@pytest.mark.parametrize("kind", ["av", "url"])
def test_mpegts_timestamp_wrap_around_samples_evenly(tmp_path: Path, kind: str) -> None:
    clip = make_wrapping_ts_clip(tmp_path / "wrap.ts", seconds=3.0, fps=10, before_wrap=1.0)
    with _reader(kind, clip, 2.0) as src:
        pts = [f.pts_seconds for f in src]
    assert len(pts) == 6
    np.testing.assert_allclose(np.diff(pts), 0.5, atol=1e-6)  # straight across the 33-bit wrap


def test_realtime_file_is_paced_by_its_timestamps(tmp_path: Path) -> None:
    clip = make_lavfi_clip(tmp_path / "c.mp4", seconds=1.5, fps=10)
    with FileSource(FileSourceConfig(clip, fps=None, realtime=True)) as src:
        assert src.live
        first = next(src)
        t0 = time.monotonic()
        frames = [first, *src]
        elapsed = time.monotonic() - t0
    assert len(frames) == 15
    assert elapsed >= 0.9 * (frames[-1].pts_seconds - first.pts_seconds)  # never ahead of the clock
    with FileSource(FileSourceConfig(clip, fps=None)) as fast:
        assert not fast.live and len(list(fast)) == 15


def test_pacer_stops_instead_of_sleeping() -> None:
    stop = threading.Event()
    pacer = Pacer(True, stop)
    assert pacer.wait(0.0)
    stop.set()
    assert not pacer.wait(30.0)  # returns at once: a stopped reader never sleeps out a gap
    assert not Pacer(False, stop).wait(1.0)
