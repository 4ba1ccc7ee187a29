"""Bundled media: a small sample clip for demos and tests (made by `tools/yardstick/make_sample.py`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_video_path"]


def sample_video_path() -> Path:
    """Path of the bundled 8 s, 336x336, 2 fps H.264 clip of coloured shapes (`sample.mp4`, see `make_sample`)."""
    return Path(__file__).resolve().parent / "sample.mp4"
