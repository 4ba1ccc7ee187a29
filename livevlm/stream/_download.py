"""A URL to a file whose download broke: opened again and read on from the last frame yielded (`AVLiveSource`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .file import av
from .sampler import RESUME_GAP, Timeline


class DownloadResume:
    """What `AVLiveSource` does for a download (not live, of a declared end) whose connection breaks: its retry
    policy is `resume`; the frames after the last one yielded are read from a keyframe before it (a seek when
    the server takes byte ranges, else from the start), on the file's own clock."""

    def _resumable(self: Any) -> bool:
        """Whether a read error is a download to resume: a URL to a file (it declares its end) with a policy."""
        return self.resume is not None and self.resume.max_retries > 0 and self._declares_end

    def shortfall(self: Any) -> str | None:
        """As `Source.shortfall`, and a download that broke and could not be resumed."""
        base = super().shortfall()  # type: ignore[misc]
        if self._broken is None:
            return base
        where = f"connection lost after {self._last_yielded or 0.0:.1f} s ({self._broken})"
        return where if base is None else f"{base}; {where}"

    def _decoded_after(self: Any, seconds: float) -> Iterator[tuple[float, Any]]:
        """`_decoded` for a download opened again: from a keyframe at or before `seconds` when the server takes a
        byte range, else from the start; the stream's own clock again, the sampler past what was yielded."""
        self._sampler.start = seconds + RESUME_GAP
        for attempt in ("seek", "from the start"):
            self._timeline = Timeline(wrap_seconds=self._timeline.wrap_seconds, period=self._timeline.period)
            base = self._stream.time_base
            if attempt == "seek" and base is not None and seconds > 0:
                try:
                    self._container.seek(int((max(0.0, seconds - 1.0) + self._origin) / base), stream=self._stream)
                except (av.FFmpegError, OSError):  # no byte ranges: the seek failed, the container is spent
                    self._release()
                    self._container, self._stream = self._open()
                    continue
            frames = self._decoded()
            first = next(frames, None)
            if attempt == "seek" and first is not None and first[0] > seconds + 1e-6:
                frames.close()  # landed past the break (MPEG-TS): frames in between would be lost
                self._release()
                self._container, self._stream = self._open()
                continue
            if first is not None:
                yield first
            yield from frames
            return
