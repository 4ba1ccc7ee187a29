"""`Ingestor`: a background thread moving frames from a source (through a `LiveReader`) into a sink.

source ─► LiveReader (thread 1, bounded buffer, drop policy) ─► Ingestor (thread 2) ─► sink(frame), e.g.
`Session.push`. A slow sink never makes memory grow: the buffer drops (live) or the source waits (files).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import FrameError, LivevlmError
from .base import Source, SourceStats
from .buffer import BufferStats
from .config import ReaderConfig
from .frame import Frame
from .reader import LiveReader

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class IngestStats:
    """Counters of one ingestion: the source's, its buffer's and the sink's."""

    source: SourceStats
    buffer: BufferStats
    frames_processed: int = 0
    """Frames the sink accepted."""
    frames_rejected: int = 0
    """Frames the sink refused with `FrameError` (skipped; ingestion goes on)."""
    seconds: float = 0.0
    """Wall time since the ingestion started."""
    running: bool = False
    error: str | None = None
    """Why ingestion stopped early (the source's or the sink's typed error; any other exception of the sink,
    e.g. out of memory, with its type name), if it did."""
    last_rejection: str | None = None
    """Why the sink refused the last frame it refused (its `FrameError`'s message), if any."""


class Ingestor:
    """Feeds every frame `source` delivers to `sink` on a background thread until the end or `stop()`."""

    def __init__(
        self, source: Source | LiveReader, sink: Callable[[Frame], object], reader: ReaderConfig | None = None
    ) -> None:
        self.reader = source if isinstance(source, LiveReader) else LiveReader(source, reader)
        self.error: Exception | None = None
        """Why ingestion stopped early: the source's or sink's `LivevlmError`, or any other exception the sink
        raised (re-raised on the thread too, so its traceback is printed)."""
        self._sink = sink
        self._stop = threading.Event()
        self._processed = 0
        self._rejected = 0
        self._last_rejection: str | None = None
        self._t0: float | None = None
        self._t1: float | None = None
        self._thread = threading.Thread(
            target=self._loop, name=f"livevlm-ingest:{self.reader.source.source_id}", daemon=True
        )

    def start(self) -> Self:
        """Start reading and feeding (idempotent)."""
        if self._thread.ident is None:
            self._t0 = time.monotonic()
            self.reader.start()
            self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            for frame in self.reader:
                if self._stop.is_set():
                    break
                try:
                    self._sink(frame)
                except FrameError as e:
                    self._rejected += 1
                    self._last_rejection = str(e)
                    continue
                self._processed += 1
        except LivevlmError as e:  # the source gave up, or the sink refused to go on
            self.error = e
        except Exception as e:  # a bug or a resource failure in the sink: stats say why ingestion stopped
            self.error = e
            raise
        finally:
            self.reader.close()
            self._t1 = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the source to end; True if it did."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading; waits up to `timeout` (default: the reader's join timeout) for both threads."""
        self._stop.set()
        timeout = self.reader.config.join_timeout if timeout is None else timeout
        joined = self.reader.close()
        return self.wait(timeout) and joined

    @property
    def stats(self) -> IngestStats:
        """A copy of the counters."""
        r = self.reader.stats
        end = self._t1 if self._t1 is not None else time.monotonic()
        seconds = end - self._t0 if self._t0 is not None else 0.0
        error = self.error or self.reader.error
        return IngestStats(
            r.source,
            r.buffer,
            self._processed,
            self._rejected,
            seconds,
            self.running,
            _describe(error),
            self._last_rejection,
        )


def _describe(error: Exception | None) -> str | None:
    """A typed error's message as it is; another exception's with its type name (a bare 'CUDA out of memory'
    or '[Errno 28] ...' would not say what failed)."""
    if error is None or isinstance(error, LivevlmError):
        return str(error) if error is not None else None
    return f"{type(error).__name__}: {error}"
