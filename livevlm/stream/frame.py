"""`Frame`: one decoded video frame as data (uint8 RGB, HWC) with its presentation time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FrameError


@dataclass(frozen=True)
class Frame:
    """An RGB frame: `data` is uint8 of shape (H, W, 3); `pts_seconds` is its presentation time."""

    data: np.ndarray
    pts_seconds: float
    source_id: str = ""

    def __post_init__(self) -> None:
        d = self.data
        if not isinstance(d, np.ndarray):
            raise FrameError(f"Frame.data must be a numpy array, got {type(d).__name__}")
        if d.dtype != np.uint8:
            raise FrameError(f"Frame.data must be uint8, got {d.dtype}")
        if d.ndim != 3 or d.shape[2] != 3:
            raise FrameError(f"Frame.data must have shape (H, W, 3) RGB, got {tuple(d.shape)}")
        if d.shape[0] < 1 or d.shape[1] < 1:
            raise FrameError(f"Frame.data has an empty side: {tuple(d.shape)}")
        if not np.isfinite(self.pts_seconds):
            raise FrameError(f"Frame.pts_seconds must be finite, got {self.pts_seconds}")

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    def __repr__(self) -> str:
        src = f", source_id={self.source_id!r}" if self.source_id else ""
        return f"Frame(shape={tuple(self.data.shape)}, pts_seconds={self.pts_seconds:.3f}{src})"
