"""`LavfiSource`: FFmpeg's synthetic test sources (testsrc2, mandelbrot, life, ...) as a camera stand-in."""

from __future__ import annotations

from .config import LavfiConfig
from .live import AVLiveSource, OpenSpec


class LavfiSource(AVLiveSource):
    """Frames of a lavfi graph, paced in real time like a camera (or as fast as possible)."""

    def __init__(self, config: LavfiConfig) -> None:
        self.config = config
        super().__init__(
            OpenSpec(config.graph, "lavfi"),
            source_id=f"lavfi:{config.graph}",
            fps=config.fps,
            live=False,
            open_timeout=10.0,
            read_timeout=10.0,
            realtime=config.realtime,
            max_frames=config.max_frames,
            duration_seconds=config.duration_seconds,
            max_input_pixels=config.max_input_pixels,
        )
        self.live = config.realtime  # paced, it stands in for a camera; unpaced, a consumer may make it wait
