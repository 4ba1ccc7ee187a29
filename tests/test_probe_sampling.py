"""Files whose frames come slower than the sampling rate: a variable-frame-rate clip of a still scene (a screen
recorder writes a frame only when the picture changes) and a 1 fps source. A player shows each frame until the
next, so sampling at `fps` repeats the frame on screen; a dense source is sampled exactly as before.

The clips are drawn here (a coloured square on a dark background, the bundled model's world) and encoded with PyAV
at the presentation times given, then read through the public `read_frames` / `Session.ingest`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from livevlm import Session, SessionConfig, load_model
from livevlm.stream import FileSource, FileSourceConfig, read_frames
from livevlm.stream.file import MAX_HOLD_SECONDS

RED, BLUE = (225, 35, 35), (45, 75, 235)


def square(colour: tuple[int, int, int], side: int = 112) -> np.ndarray:
    """A still frame: a `colour` square in the middle of a dark grey background."""
    img = np.full((side, side, 3), 40, np.uint8)
    img[side // 3 : 2 * side // 3, side // 3 : 2 * side // 3] = colour
    return img


def write_clip(path: Path, frames: list[tuple[float, np.ndarray]], rate: int = 30) -> Path:
    """An H.264 mp4 with one frame per (presentation time in seconds, RGB image): variable frame rate when the
    times are uneven. The last frame lasts 1/rate (what a muxer gives it)."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0][1].shape[:2]
        stream.pix_fmt, stream.time_base, stream.codec_context.time_base = "yuv420p", tb, tb
        for t, img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = round(t / tb), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def colour_of(frame) -> str:
    r, _, b = (int(v) for v in frame.data[56, 56])
    return "red" if r > b else "blue"


def test_still_stretch_of_a_vfr_file_repeats_the_frame_on_screen(tmp_path: Path) -> None:
    # red from 0 s, blue from 4 s, a last (unchanged) frame at 7.5 s: three frames for 7.5 s of video
    clip = write_clip(tmp_path / "still.mp4", [(0.0, square(RED)), (4.0, square(BLUE)), (7.5, square(BLUE))])
    frames = read_frames(clip, fps=2.0)
    assert [f.pts_seconds for f in frames] == pytest.approx([0.5 * k for k in range(16)])
    assert [colour_of(f) for f in frames] == ["red"] * 8 + ["blue"] * 8  # what a player shows at each instant


def test_source_slower_than_fps_is_sampled_at_fps_to_its_end(tmp_path: Path) -> None:
    # 1 fps for 6 s: each frame is shown for a second, the last one until 6 s
    clip = write_clip(tmp_path / "slow.mp4", [(k, square(RED if k < 3 else BLUE)) for k in range(6)], rate=1)
    frames = read_frames(clip, fps=2.0)
    assert [f.pts_seconds for f in frames] == pytest.approx([0.5 * k for k in range(12)])
    assert [colour_of(f) for f in frames] == ["red"] * 6 + ["blue"] * 6


def test_dense_source_is_not_repeated(tmp_path: Path) -> None:
    # 25 fps: the sampler's instants (every 0.5 s) each get their own decoded frame, none is a copy
    clip = write_clip(tmp_path / "dense.mp4", [(k / 25, square(RED)) for k in range(100)], rate=25)
    pts = [f.pts_seconds for f in read_frames(clip, fps=2.0)]
    assert pts == pytest.approx([0.0, 0.52, 1.0, 1.52, 2.0, 2.52, 3.0, 3.52])


def test_a_timestamp_jump_is_not_filled_and_max_frames_counts_copies(tmp_path: Path) -> None:
    jump = MAX_HOLD_SECONDS + 40.0  # a broken recording's clock, not a still: no copies
    clip = write_clip(tmp_path / "jump.mp4", [(0.0, square(RED)), (0.5, square(RED)), (jump, square(BLUE))])
    assert [f.pts_seconds for f in read_frames(clip, fps=2.0)] == pytest.approx([0.0, 0.5, jump])
    still = write_clip(tmp_path / "still.mp4", [(0.0, square(RED)), (4.0, square(BLUE)), (7.5, square(BLUE))])
    with FileSource(FileSourceConfig(still, fps=2.0, max_frames=5)) as src:
        assert [f.pts_seconds for f in src] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


def test_bundled_model_reads_a_vfr_still_clip_as_it_plays(tmp_path: Path, bundled) -> None:
    clip = write_clip(tmp_path / "still.mp4", [(0.0, square(RED)), (4.0, square(BLUE)), (7.5, square(BLUE))])
    with Session(bundled, SessionConfig()) as session:
        assert session.ingest(clip) == 16  # 8 s at 2 fps, not the file's 3 frames
        assert session.stats.chunks == 8 and session.stats.last_pts_seconds == pytest.approx(7.5)
        assert "".join(session.ask("What colour is the square at the start?")).strip() == "red"
        assert "".join(session.ask("What colour is the square at the end?")).strip() == "blue"
