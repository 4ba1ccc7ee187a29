"""Which decoded frame a file read yields at which time: the `Sampler`'s pick, and the frame on screen held over
sampling instants no frame reaches. Shared by both file backends, so PyAV and decord yield the same times.

(t, frame) in presentation order ─► Hold: instants before t still show the previous frame ─► Sampler ─► (t, frame)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .sampler import Sampler

_EPS = 1e-6  # the Sampler's slack (seconds) when comparing a time to a sampling instant
MAX_HOLD_SECONDS = 60.0
"""A frame is repeated at the sampling instants up to the next frame only when that one comes within this many
seconds: a longer jump is a timestamp discontinuity (a broken recording), skipped as before, not hours of copies."""

T = TypeVar("T")


class Hold:
    """The instants of `Sampler`'s grid (t0 + k/fps) that fall between two decoded frames, shown the held frame.

    A variable-frame-rate file (screen recorders write a frame only when the picture changes) or a source slower
    than `fps` leaves instants that no frame starts in: sampling alone would hand a 14 s still clip to the model
    as 3 frames, its time squeezed. Every instant before the last one at or before the next frame is filled,
    so a source at `fps` or faster (at most one instant between two frames) never repeats a frame."""

    def __init__(self, fps: float | None, grid: tuple[float, float] | None = None) -> None:
        self.fps = fps
        self._t0, self._next = grid if grid is not None else (None, None)  # a resumed read: the sampler's grid

    def kept(self, t: float) -> None:
        """The sampler kept a frame at `t`: the next instant is the first of the grid after it (as `Sampler`)."""
        if self.fps is None:
            return
        self._t0 = t if self._t0 is None else self._t0
        self._next = self._t0 + (math.floor((t - self._t0) * self.fps + _EPS) + 1) / self.fps

    def instants(self, until: float) -> list[float]:
        """The instants to show the held frame at before a frame at `until` (or the held frame's end)."""
        out: list[float] = []
        while self._next is not None and self.fps is not None and self._next + 1 / self.fps <= until + _EPS:
            out.append(self._next)
            self.kept(self._next)
        return out


def schedule(
    frames: Iterable[tuple[float, T]],
    sampler: Sampler,
    end: Callable[[float, T], float | None],
) -> Iterator[tuple[float, T, bool]]:
    """(time, frame, repeated) to yield for `frames` (time, frame) in presentation order: the frames `sampler`
    keeps, and the frame on screen again at each instant no frame reached (`repeated`), also after the last
    frame up to `end(time, frame)` (when it stops being shown; None: unknown, nothing is added)."""
    hold = Hold(sampler.fps, sampler.grid)
    held: tuple[float, T] | None = None  # the frame on screen: the last one decoded
    for t, frame in frames:
        if held is not None and t - held[0] <= MAX_HOLD_SECONDS:
            yield from _repeat(held[1], hold.instants(t), sampler)
        held = (t, frame)
        if sampler.keep(t):
            hold.kept(t)
            yield t, frame, False
    until = end(*held) if held is not None else None
    if held is not None and until is not None:
        yield from _repeat(held[1], hold.instants(until), sampler)


def _repeat(frame: T, instants: list[float], sampler: Sampler) -> Iterator[tuple[float, T, bool]]:
    for t in instants:
        if not sampler.keep(t):
            return
        yield t, frame, True
