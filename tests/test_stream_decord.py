"""The decord file backend reads odd files as the PyAV reader does (same times, same pictures), or says why it
leaves a file to PyAV: a recording whose clock starts at 10 h, a variable-frame-rate file, anamorphic pixels,
a phone video's rotation, frames without timestamps. decord is a dev dependency: these never skip."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from media import make_anamorphic_clip, make_raw_h264_copy, make_rotated_copy, make_timed_clip, make_vfr_clip

from livevlm.stream import FileSource, FileSourceConfig, Frame


def read(path: Path, backend: str, **cfg: object) -> tuple[list[Frame], FileSource]:
    with FileSource(FileSourceConfig(path, backend=backend, **cfg)) as src:
        return list(src), src


def assert_same(got: list[Frame], want: list[Frame]) -> None:
    assert [f.pts_seconds for f in got] == pytest.approx([f.pts_seconds for f in want], abs=1e-9)
    for a, b in zip(got, want):
        assert a.data.shape == b.data.shape
        assert np.abs(a.data.astype(int) - b.data.astype(int)).mean() < 2.0  # colour conversion rounding


def test_a_ten_hour_clock_samples_the_same_frames(tmp_path: Path) -> None:
    # decord's own timestamps are float32: 10 h into the clock they are off by up to 4 ms (1.52 s reads 1.5189)
    clip = make_timed_clip(tmp_path / "tuner.ts", seconds=3.0, fps=25, start=36000.0, format="mpegts")
    got, src = read(clip, "decord", fps=2.0)
    assert src.backend == "decord" and src.fallback is None
    want, _ = read(clip, "av", fps=2.0)
    assert [round(f.pts_seconds, 6) for f in want] == [0.0, 0.52, 1.0, 1.52, 2.0, 2.52]
    assert_same(got, want)  # before: 0.5205, 1.0012, 1.5189, 2.0395, ...
    got, _ = read(clip, "decord", fps=2.0, start_seconds=1.0)
    assert_same(got, read(clip, "av", fps=2.0, start_seconds=1.0)[0])


def test_a_still_stretch_holds_the_frame_on_screen(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.15, 0.9, 1.0, 2.5, 2.6]  # a screen recording: a frame when the picture changes
    clip = make_vfr_clip(tmp_path / "vfr.mp4", times)
    got, src = read(clip, "decord", fps=2.0)
    assert [f.pts_seconds for f in got] == pytest.approx([0.0, 0.9, 1.0, 1.5, 2.0, 2.5])  # before: 1.5, 2.0 lost
    assert_same(got, read(clip, "av", fps=2.0)[0])
    assert src.stats.frames_yielded == 6 and got[3].data is not got[4].data  # repeats are copies
    got, _ = read(clip, "decord", fps=2.0, max_frames=4)
    assert [f.pts_seconds for f in got] == pytest.approx([0.0, 0.9, 1.0, 1.5])


def test_anamorphic_pixels_are_stretched_to_the_display_aspect(tmp_path: Path) -> None:
    clip = make_anamorphic_clip(tmp_path / "dv.mp4", Fraction(2, 1))
    got, src = read(clip, "decord", fps=None)
    assert src.backend == "decord" and got[0].data.shape == (48, 128, 3)
    assert_same(got, read(clip, "av", fps=None)[0])
    got, src = read(clip, "decord", fps=None, max_frames=1, max_input_pixels=64 * 24)  # the cap after the stretch
    assert got[0].data.shape == (24, 64, 3) and src.stats.frames_downscaled == 1


@pytest.mark.parametrize("kind", ["rotated", "raw"])
def test_a_file_decord_misreads_falls_back_to_pyav_and_says_why(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain = make_timed_clip(tmp_path / "plain.mp4", size=(64, 48))
    if kind == "rotated":  # decord 0.6 returns a garbled 4-channel array or raises on a display matrix
        clip, why = make_rotated_copy(plain, tmp_path / "phone.mp4", 90), "rotated by 90 degrees"
    else:
        clip, why = make_raw_h264_copy(plain, tmp_path / "raw.h264"), "no timestamps"
    with caplog.at_level(logging.WARNING, logger="livevlm.stream.file"):
        got, src = read(clip, "decord", fps=2.0)
    assert src.backend == "av" and why in (src.fallback or "")
    assert any(why in r.getMessage() and str(clip) in r.getMessage() for r in caplog.records)
    assert_same(got, read(clip, "av", fps=2.0)[0])
    if kind == "rotated":
        assert got[0].data.shape == (64, 48, 3)  # upright, as a player shows it
    with caplog.at_level(logging.INFO, logger="livevlm.stream.file"):
        caplog.clear()
        with FileSource(FileSourceConfig(clip, backend="auto")) as auto:
            assert auto.backend == "av"  # 'auto' says so quietly
    assert [r.levelno for r in caplog.records] == [logging.INFO]
