"""`PushSource`: frames pushed from your own loop (a robot's control loop), consumed like any other source."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from ..errors import FrameError
from .base import Source, SourceStats
from .buffer import FrameBuffer
from .config import MAX_INPUT_PIXELS
from .frame import Frame, check_side, check_time, fit_frame, hand_over


class PushSource(Source):
    """A bounded buffer fed by `push()` (thread-safe, never blocks with policy 'latest'); iterate to consume.

    `end()` says no more frames will come: iteration finishes after the frames still queued. A frame of more
    than `max_input_pixels` pixels (None: no cap) is downscaled by `fit_frame` as it is pushed.
    """

    live = True

    def __init__(
        self,
        capacity: int = 8,
        policy: str = "latest",
        source_id: str = "push",
        max_input_pixels: int | None = MAX_INPUT_PIXELS,
    ) -> None:
        super().__init__(source_id)
        self.max_input_pixels = max_input_pixels
        self.buffer = FrameBuffer(capacity, policy)
        self._lock = threading.Lock()
        self._t0: float | None = None

    @property
    def stats(self) -> SourceStats:
        """Counters; `frames_yielded` is what the consumer has taken from the buffer."""
        self._stats.frames_yielded = self.buffer.stats.frames_out
        return self._stats

    @stats.setter
    def stats(self, value: SourceStats) -> None:
        self._stats = value

    def push(self, frame: Frame | np.ndarray, pts_seconds: float | None = None) -> bool:
        """Queue one RGB uint8 (H, W, 3) frame; pts defaults to the Frame's own, else seconds since the first push.

        The pixels are copied as they are pushed, so a loop may refill one buffer for every frame (a camera
        driver's); a `Session` watching this source keeps that copy (`hand_over`) rather than copying it again.
        Frames from several threads are queued in the order of their default times. A malformed frame raises
        `FrameError` (counted in `stats.frames_rejected`); returns False once the source has ended.
        Times are not checked against each other here: the consumer (a `Session`) does that.
        """
        try:
            data = frame.data if isinstance(frame, Frame) else frame
            if pts_seconds is None and isinstance(frame, Frame):
                pts_seconds = frame.pts_seconds
            when = 0.0 if pts_seconds is None else check_time(pts_seconds)  # a str or a bool is not a time
            checked = Frame(data, when, self.source_id)  # the pixels checked once per frame
            pixels = check_side(checked.data)  # (a 1x1 frame: refused here, not later)
            fitted = pixels if self.max_input_pixels is None else fit_frame(pixels, self.max_input_pixels)
            checked = checked if fitted is pixels else replace(checked, data=fitted)
        except (FrameError, TypeError, ValueError) as e:
            with self._lock:
                self._stats.frames_rejected += 1
            raise e if isinstance(e, FrameError) else FrameError(f"not a frame with a time in seconds: {e}") from None
        owned = hand_over(np.array(fitted) if fitted is data else fitted)  # never the caller's array
        with self._lock:  # a default time is taken where the frame is queued: times follow the queue's order
            now = time.monotonic()
            self._t0 = now if self._t0 is None else self._t0
            pts = checked.pts_seconds if pts_seconds is not None else now - self._t0
            queued = replace(checked, data=owned, pts_seconds=pts)
            self._stats.frames_downscaled += int(fitted is not data)
            self._stats.frames_decoded += 1
            self._stats.last_pts_seconds = pts
            return self.buffer.put(queued)

    def end(self) -> None:
        """No more frames will be pushed."""
        self.buffer.close()

    def stop(self) -> None:
        super().stop()
        self.buffer.close()

    def _release(self) -> None:
        self.buffer.close()

    def _run(self) -> Iterator[Frame]:
        while (frame := self.buffer.get()) is not None:  # wakes on push, end() or stop()
            yield frame
