"""Damaged stretches a demuxer skips without a sign: Matroska (mkv, webm) resyncs to its next cluster.

MPEG-TS flags the packets it cut (`packet.is_corrupt`) and a broken packet fails to decode: both are counted as
they come. A Matroska demuxer that meets garbage instead drops everything up to the next cluster it can parse:
seconds of frames vanish, at most one packet fails to decode. What shows it is the index (Cues, read by a seek):
a keyframe it lists never arrived. The frames lost are then the hole in the decoded times around it, counted at
the stream's frame rate. A gap in the times alone is no sign (a variable-rate file has legitimate ones), and a
file without Cues (a recording that was never finished) says nothing: its losses stay uncounted.
"""

from __future__ import annotations

from typing import Any

from .base import SourceStats

_MAX_GAPS = 10_000  # holes in the decoded times remembered (a screen recording may have many)


class Losses:
    """Collects the keyframes demuxed and the holes in the decoded times; `finish` compares with the index."""

    def __init__(self, container: Any, period: float | None) -> None:
        fmt = container.format.name if container.format is not None else ""
        self.enabled = fmt.startswith("matroska")
        self.period = period
        self.keyframes: set[int] = set()
        self.gaps: list[tuple[float, float]] = []
        self._last: float | None = None

    def packet(self, packet: Any) -> None:
        if self.enabled and packet.is_keyframe and packet.pts is not None:
            self.keyframes.add(packet.pts)

    def frame(self, t: float) -> None:
        if not self.enabled or self.period is None:
            return
        if self._last is not None and t - self._last > 1.5 * self.period and len(self.gaps) < _MAX_GAPS:
            self.gaps.append((self._last, t))
        self._last = t

    def missing(self, container: Any, stream: Any) -> list[int]:
        """Keyframes (pts) the index lists between the first and last demuxed ones that never arrived."""
        if not self.enabled or len(self.keyframes) < 2:
            return []
        try:
            container.seek(0, stream=stream)  # makes the demuxer read the Cues into the index
        except (OSError, ValueError):  # PyAV raises FFmpegError (an OSError) when a file cannot seek
            return []
        lo, hi = min(self.keyframes), max(self.keyframes)
        listed = {e.timestamp for e in stream.index_entries if e.is_keyframe}
        return sorted(t for t in listed if lo < t < hi and t not in self.keyframes)

    def finish(self, container: Any, stream: Any, origin: float, stats: SourceStats) -> None:
        """Count the frames lost in each hole of the decoded times that holds a keyframe that never arrived."""
        missing = self.missing(container, stream)
        if not missing:
            return
        times = [float(p * stream.time_base) - origin for p in missing]
        holes = [(a, b) for a, b in self.gaps if any(a < t < b for t in times)]
        for a, b in holes:
            stats.frames_lost += max(1, round((b - a) / (self.period or b - a)) - 1)
            stats.last_loss = (a, b)
        if not holes:  # no hole around them (they were not shown anyway): each lost keyframe is a frame lost
            stats.frames_lost += len(times)
            stats.last_loss = (times[0], times[-1])
