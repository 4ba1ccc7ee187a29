"""Timestamps and pacing: a monotonic stream clock, fps sampling, real-time pacing.

raw pts ─► Timeline (unwrap counter wrap-around, rebase resets/reconnects, keep forward gaps)
        ─► Sampler (first frame at or after each instant t0 + k/fps)
        ─► Pacer (real time: wait for the frame's moment; fast: never wait)
"""

from __future__ import annotations

import math
import threading
import time

_EPS = 1e-6  # seconds of float slack when comparing a pts to a sampling instant
RESUME_GAP = 1e-3
"""Seconds after an earlier read's last frame where a resumed read starts: past that frame, before any later one
(sampling at up to MAX_FPS)."""


class Timeline:
    """Maps raw presentation times (seconds) to a non-decreasing stream time.

    - a backward jump of about `wrap_seconds` is a timestamp counter wrapping: unwrapped exactly;
    - any other backward jump larger than `max_backstep` is a reset (encoder or server restart): the clock
      continues one frame period after the last time;
    - forward jumps are real gaps and are kept;
    - `rebase(at)` starts a new segment (a reconnect) whose first frame maps to `at`.
    """

    def __init__(
        self,
        start: float | None = None,
        wrap_seconds: float | None = None,
        max_backstep: float = 1.0,
        period: float = 1 / 30,
    ) -> None:
        self.wrap_seconds = wrap_seconds
        self.max_backstep = max_backstep
        self.period = period
        self.wraps = 0
        self.resets = 0
        self._next_start = start
        self._offset = 0.0
        self._last_raw: float | None = None
        self._last: float | None = None

    @property
    def last(self) -> float | None:
        """The last time returned."""
        return self._last

    def rebase(self, at: float) -> None:
        """The next frame starts a new segment at stream time `at` (never before the last time)."""
        self._next_start = at if self._last is None else max(at, self._last + self.period)
        self._last_raw = None

    def tick(self) -> float:
        """Time of a frame without a timestamp before any with one: one period after the last time."""
        if self._next_start is not None:
            t = self._next_start
        else:
            t = 0.0 if self._last is None else self._last + self.period
        if self._last_raw is None:  # the next real timestamp continues one period later
            self._next_start = t + self.period
        self._last = t
        return t

    def __call__(self, raw: float) -> float:
        if self._last_raw is None:
            if self._next_start is not None:
                self._offset = self._next_start - raw
                self._next_start = None
        else:
            step = raw - self._last_raw
            if self.wrap_seconds and abs(step + self.wrap_seconds) < self.wrap_seconds / 4:
                self._offset += self.wrap_seconds
                self.wraps += 1
            elif step < -self.max_backstep and self._last is not None:
                self._offset = self._last + self.period - raw
                self.resets += 1
        self._last_raw = raw
        t = raw + self._offset
        if self._last is not None and t < self._last:  # small jitter backwards: hold the clock
            t = self._last
        self._last = t
        return t


class Sampler:
    """Keeps the first frame at or after each instant t0 + k / fps (t0: the first frame kept).

    Variable frame rates and gaps need nothing special: an instant that falls in a gap is simply never
    reached, and sampling resumes at the first instant after it. `fps=None` keeps every frame.
    """

    def __init__(self, fps: float | None, start: float | None = None) -> None:
        self.fps = fps
        self.start = start
        self._t0: float | None = None
        self._next = -math.inf

    @property
    def grid(self) -> tuple[float, float] | None:
        """(t0, the next instant) once the grid is anchored; None before (or without fps)."""
        return None if self._t0 is None or self.fps is None else (self._t0, self._next)

    @classmethod
    def after(cls, fps: float | None, first: float, last: float) -> Sampler:
        """The sampler of a read whose first frame kept was at `first` and last at `last`, as it was then: a
        read resumed there keeps what the whole read would have kept after `last`."""
        sampler = cls(fps)
        sampler.keep(first), sampler.keep(last)
        sampler.start = last + RESUME_GAP
        return sampler

    def keep(self, t: float) -> bool:
        """Whether the frame at time `t` is kept; advances to the next instant when it is."""
        floor = self._next if self.start is None else max(self.start, self._next)
        if t + _EPS < floor:
            return False
        if self.fps is not None:
            self._t0 = t if self._t0 is None else self._t0
            self._next = self._t0 + (math.floor((t - self._t0) * self.fps + _EPS) + 1) / self.fps
        return True


class Pacer:
    """Releases frames at the pace of their timestamps (real time) or at once (as fast as possible).

    Waits on `stop`, so a reader asked to stop never sleeps out a long gap; a late frame is released at once.
    """

    def __init__(self, realtime: bool, stop: threading.Event | None = None, speed: float = 1.0) -> None:
        self.realtime = realtime
        self.speed = speed
        self.waits = 0
        """Frames held back because they were early (always 0 when not `realtime`)."""
        self._stop = stop or threading.Event()
        self._anchor: tuple[float, float] | None = None  # (stream time, monotonic clock)

    def wait(self, t: float) -> bool:
        """Wait until stream time `t` is due; False when stopped first."""
        if not self.realtime:
            return not self._stop.is_set()
        now = time.monotonic()
        if self._anchor is None or t < self._anchor[0]:
            self._anchor = (t, now)
        due = self._anchor[1] + (t - self._anchor[0]) / self.speed
        if due <= now:
            return not self._stop.is_set()
        self.waits += 1
        return not self._stop.wait(due - now)
