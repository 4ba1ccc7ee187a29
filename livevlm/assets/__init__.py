"""Bundled media: a small sample clip for demos and tests (regenerate with `make_sample`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_video_path"]


def sample_video_path() -> Path:
    """Path of the bundled 4 s, 320x240, 10 fps H.264 `testsrc2` clip (`sample.mp4`)."""
    return Path(__file__).resolve().parent / "sample.mp4"
