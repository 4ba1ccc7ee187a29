"""`LiveReader`: one background thread per source, filling a bounded `FrameBuffer` the consumer reads.

source thread: for frame in source ─► buffer.put (policy 'latest' drops the oldest; 'block' waits)
consumer:      read(timeout) / read_latest() / for frame in reader ─► frames, then the source's error if any
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import LivevlmError
from .base import Source, SourceStats
from .buffer import BufferStats, FrameBuffer
from .config import ReaderConfig
from .frame import Frame
from .push import PushSource

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class ReaderStats:
    """A reader's state: its source's counters and its buffer's."""

    source: SourceStats
    buffer: BufferStats
    running: bool
    error: str | None = None
    """Why the source stopped early (a typed error's message), if it did."""


class LiveReader:
    """Reads `source` on its own thread into a bounded buffer; `close()` stops it (joined with a timeout)."""

    def __init__(self, source: Source, config: ReaderConfig | None = None) -> None:
        self.source = source
        self.config = config or ReaderConfig()
        self.error: LivevlmError | None = None
        self._raised = False
        self._thread: threading.Thread | None = None
        if isinstance(source, PushSource):  # already a buffer filled by the user's thread
            self.buffer = source.buffer
        else:
            policy = self.config.policy or ("latest" if source.live else "block")
            self.buffer = FrameBuffer(self.config.capacity, policy)
            name = f"livevlm-reader:{source.source_id}"
            self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def start(self) -> Self:
        """Start the reader thread (idempotent)."""
        if self._thread is not None and self._thread.ident is None:
            self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self) -> None:
        try:
            for frame in self.source:
                if not self.buffer.put(frame):  # closed by the consumer
                    break
        except LivevlmError as e:
            self.error = e
        finally:
            self.buffer.close()
            self.source.close()

    @property
    def running(self) -> bool:
        """Whether frames may still arrive."""
        return not self.buffer.closed

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None at the end of the stream, after which the source's error (if any) is raised.

        `SourceTimeoutError` when no frame arrives within `timeout` seconds (None: until one or the end).
        """
        frame = self.buffer.get(timeout)
        if frame is None and self.error is not None and not self._raised:
            self._raised = True
            raise self.error
        return frame

    def read_latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, dropping older queued ones; waits up to `timeout` when none is queued yet."""
        frame = self.buffer.latest()
        return frame if frame is not None else self.read(timeout)

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        while (frame := self.read()) is not None:
            yield frame

    def close(self) -> bool:
        """Stop the source and the thread; True when the thread finished within `config.join_timeout`."""
        self.source.stop()
        self.buffer.close()
        if self._thread is None:
            self.source.close()
            return True
        if self._thread.ident is None:  # never started
            self.source.close()
            return True
        self._thread.join(self.config.join_timeout)
        return not self._thread.is_alive()

    @property
    def stats(self) -> ReaderStats:
        """A copy of the counters."""
        err = str(self.error) if self.error is not None else None
        return ReaderStats(replace(self.source.stats), self.buffer.stats, self.running, err)
