"""`FrameBuffer`: a bounded, thread-safe FIFO of frames with a drop policy.

policy 'latest': a full buffer drops its oldest frame (live Q&A: the model always sees the newest frames)
policy 'block':  a full buffer makes the producer wait for room (files: nothing is lost)
Memory is bounded by `capacity` frames whatever the producer and consumer speeds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError, SourceTimeoutError
from .config import BUFFER_POLICIES
from .frame import Frame


@dataclass
class BufferStats:
    """What went through a buffer."""

    capacity: int = 0
    frames_in: int = 0
    """Frames put in (dropped ones included)."""
    frames_out: int = 0
    """Frames taken out by the consumer."""
    frames_dropped: int = 0
    """Frames discarded unread because the buffer was full (policy 'latest') or skipped by `latest()`."""
    max_depth: int = 0
    """Most frames ever held at once (never above `capacity`)."""
    depth: int = 0
    """Frames held now."""


class FrameBuffer:
    """A bounded FIFO shared by producer and consumer threads; `close()` ends it for both."""

    def __init__(self, capacity: int, policy: str = "latest") -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"FrameBuffer capacity must be an int >= 1, got {capacity!r}")
        if policy not in BUFFER_POLICIES:
            raise ConfigError(f"FrameBuffer policy must be one of {BUFFER_POLICIES}, got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats = BufferStats(capacity=capacity)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Add a frame; False if the buffer is closed (or, policy 'block', still full after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.policy == "block" and len(self._items) >= self.capacity and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                return False
            s = self._stats
            s.frames_in += 1
            if len(self._items) >= self.capacity:  # policy 'latest': the oldest frame makes room
                self._items.popleft()
                s.frames_dropped += 1
            self._items.append(frame)
            s.max_depth = max(s.max_depth, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame; None once closed and drained; `SourceTimeoutError` if nothing came in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise SourceTimeoutError(f"no frame within {timeout}s")
            if not self._items:
                return None
            self._stats.frames_out += 1
            self._cond.notify_all()
            return self._items.popleft()

    def latest(self) -> Frame | None:
        """The newest frame now held (older ones are dropped), or None if empty; never waits."""
        with self._cond:
            if not self._items:
                return None
            frame = self._items.pop()
            self._stats.frames_dropped += len(self._items)
            self._stats.frames_out += 1
            self._items.clear()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames: the producer's puts fail, the consumer drains what is left then gets None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def stats(self) -> BufferStats:
        """A copy of the counters."""
        with self._cond:
            s = self._stats
            return BufferStats(
                s.capacity, s.frames_in, s.frames_out, s.frames_dropped, s.max_depth, len(self._items)
            )
