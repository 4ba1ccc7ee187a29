"""`Source`: the one small interface every frame source implements, and the counters it keeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SourceError
from .frame import Frame
from .sampler import Pacer

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class SourceStats:
    """Counters a source keeps while it runs."""

    frames_decoded: int = 0
    frames_yielded: int = 0
    frames_corrupt: int = 0
    """Packets that failed to decode (or container reads that failed) and were skipped, or that the demuxer
    flagged as damaged (MPEG-TS, RTP: the bad bytes are dropped and the rest decoded)."""
    last_pts_seconds: float | None = None
    """Presentation time of the last decoded frame."""
    disconnects: int = 0
    """Live connections lost (read error, read timeout, or the end of a live stream)."""
    reconnects: int = 0
    """Connections re-established after a loss."""
    gap_seconds: float = 0.0
    """Stream time missing across reconnects: the sum of the jumps in `pts_seconds` they caused."""
    last_gap: tuple[float, float] | None = None
    """(last time before, first time after) the most recent reconnect."""
    last_error: str | None = None
    """Why the last connection was lost or the last reconnect attempt failed."""
    frames_downscaled: int = 0
    """Frames larger than the source's `max_input_pixels`, scaled down before they were yielded."""
    frames_rejected: int = 0
    frames_lost: int = 0
    """Frames a file's demuxer dropped over damaged data without a sign (Matroska resyncing to its next cluster),
    estimated from the hole they left at the stream's frame rate (see `livevlm.stream._damage`)."""
    last_loss: tuple[float, float] | None = None
    """(last time before, first time after) the most recent such hole."""
    """Frames refused as they were pushed (`PushSource.push`: not an RGB uint8 array, or a non-finite time)."""


class Source:
    """A stream of RGB `Frame`s: iterate it, then `close()` it (or use `with`).

    Subclasses implement `_run()` (a generator of frames) and `_release()`. `live` sources run in real time
    (cameras, streams); others (files) can be read as fast as the consumer wants. `stop()` may be called
    from any thread and makes the iteration end at the next frame or wait; `close()` releases the backend
    and must not race an iteration in progress (a `LiveReader` closes its source on its own thread).
    """

    live: bool = False
    pacer: Pacer | None = None
    """Holds each frame back to its timestamp when `pacer.realtime` (None: a source that is never paced)."""

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.stats = SourceStats()
        self.declared_duration: float | None = None
        """Duration the input's headers declare, in seconds (None: none, e.g. a camera or a live stream)."""
        self.frame_period: float | None = None
        """Seconds per frame of the input's nominal frame rate (None: unknown)."""
        self._stop = threading.Event()
        self._frames: Iterator[Frame] | None = None
        self._closed = False
        self._exhausted = False  # set by subclasses when the input itself ran out (not a limit, not stop())

    @property
    def endless(self) -> bool:
        """Whether the iteration may never end by itself: a camera, a live stream, an unbounded synthetic
        source, a push source until `end()`. Sources with `max_frames` or a declared duration end."""
        return self.live

    def shortfall(self) -> str | None:
        """What the read so far skipped or missed, as one line; None when nothing is known to be missing.

        'N corrupt packets skipped' (damaged data, stepped over), 'about N frames lost to damaged data' (a stretch
        the demuxer skipped, see `SourceStats.frames_lost`) and/or 'stopped at A s of B s' when the input
        ran out more than a frame (and 0.1 s) before the duration its headers declare (a truncated file or
        download). A read ended by `max_frames` or `stop()` has stopped early on purpose: no 'stopped at'.
        """
        s = self.stats
        stopped = None
        if self._exhausted and self.declared_duration is not None and s.last_pts_seconds is not None:
            period = self.frame_period or 0.0
            end = s.last_pts_seconds + period
            if self.declared_duration - end > max(period, 0.1):
                stopped = f"stopped at {end:.1f} s of {self.declared_duration:.1f} s"
        n = s.frames_corrupt
        damage = [f"{n} corrupt packet{'' if n == 1 else 's'} skipped"] if n else []
        if s.frames_lost and s.last_loss is not None:
            a, b = s.last_loss
            damage.append(f"about {s.frames_lost} frames lost to damaged data (the last between {a:.1f} s and {b:.1f} s)")
        corrupt = ", ".join(damage) or None
        if stopped and corrupt:
            return f"{stopped} ({corrupt})"
        return stopped or corrupt

    def _run(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the backend (decoder, connection); called once by `close()`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Frame:
        if self._closed:
            raise SourceError(f"{type(self).__name__} for {self.source_id} is closed")
        if self._frames is None:
            self._frames = self._run()
        return next(self._frames)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the iteration to end soon; thread-safe, releases nothing."""
        self._stop.set()

    def close(self) -> None:
        """Release the backend; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            frames, self._frames = self._frames, None
            if frames is not None and hasattr(frames, "close"):
                frames.close()
            self._release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source_id!r})"
