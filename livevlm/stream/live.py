"""`AVLiveSource`: frames from anything FFmpeg opens by name (URL, device, lavfi); timeouts, reconnects.

open (fail fast, typed error) ─► demux ─► decode ─► Timeline ─► Sampler (+ hold, a URL to a file) ─► Pacer ─► Frame
   ▲                               │ read error / read timeout / end of a live stream
   └── backoff + jitter ◄──────────┘ (stats: disconnects, reconnects, gap_seconds; gives up after max_retries)
A URL to a file whose download breaks is opened again the same way and read on from its last frame (seeking when
the server takes byte ranges); out of tries, the read ends with what it gave and `shortfall()` says why.

Every blocking FFmpeg call runs under PyAV's interrupt timeout (`open_timeout`, `read_timeout`); every wait
is on the source's stop event, so `stop()` from another thread ends the iteration within one read timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import Any, NoReturn

from ..errors import (
    ConfigError,
    EmptyVideoError,
    NotAVideoError,
    SourceConnectionError,
    SourceDisconnectedError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
)
from ._download import DownloadResume
from ._interruptible import open_interruptibly
from ._schedule import MAX_HOLD_SECONDS, schedule
from .base import Source
from .config import MAX_INPUT_PIXELS, ReconnectConfig
from .file import (
    _frame_seconds,
    _stream_rate,
    av,
    declared_duration,
    pixel_aspect,
    require_av,
    rgb_array,
    start_seconds,
)
from .frame import Frame
from .sampler import Pacer, Sampler, Timeline

_TS_WRAP_SECONDS = 2**33 / 90_000  # MPEG-TS 33-bit 90 kHz timestamps wrap every ~26.5 h
_PLAYLIST_FORMATS = ("hls", "dash")  # their byte size is the playlist's, not the stream's


def _has_byte_size(container: Any) -> bool:
    """Whether the input is bytes of known length -- a file, or an HTTP answer with a Content-Length -- so it
    ends even with no duration in its headers (MPEG-TS served without byte ranges: FFmpeg cannot seek to its
    end to find one). A live HTTP stream is sent chunked, of unknown length; a device or lavfi graph has none."""
    name = container.format.name if container.format is not None else ""
    if any(part in _PLAYLIST_FORMATS for part in name.split(",")):
        return False
    try:
        return int(container.size) > 0
    except (AttributeError, TypeError, ValueError, OSError):  # an input without a byte stream
        return False


@dataclass(frozen=True)
class OpenSpec:
    """What `av.open` gets: a name, an optional input format and options."""

    file: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)


class AVLiveSource(DownloadResume, Source):
    """A PyAV input read frame by frame; live inputs reconnect after a loss and rebase their timestamps."""

    _open_error: type[SourceError] = SourceError
    """The error for an input that fails to open for another reason than a timeout or a missing name."""
    _network = False
    """Opened over a network (a URL): the open waits in a worker thread, so Ctrl-C stops it at once."""

    def __init__(
        self,
        spec: OpenSpec,
        *,
        source_id: str,
        fps: float | None,
        live: bool,
        open_timeout: float,
        read_timeout: float,
        reconnect: ReconnectConfig | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        duration_seconds: float | None = None,
        max_input_pixels: int | None = MAX_INPUT_PIXELS,
        hold: bool = False,
    ) -> None:
        super().__init__(source_id)
        self.hold = hold
        """Repeat the frame on screen at sampling instants no frame reaches, when the input ends (`_holds`)."""
        self.spec = spec
        self.live = live
        self.timeouts = (open_timeout, read_timeout)
        self.reconnect = reconnect if live else None
        self.resume = reconnect if not live else None
        """Retry policy for a URL to a file whose connection breaks: opened again and read on from the last frame."""
        self._broken: str | None = None  # why a download ended early, after its retries (see `shortfall`)
        self._last_yielded: float | None = None  # stream time of the last frame yielded
        self.max_frames = max_frames
        self.duration_seconds = duration_seconds
        self.max_input_pixels = max_input_pixels
        self._rng = random.Random()
        self._sampler = Sampler(fps)
        self.pacer = Pacer(realtime, self._stop)
        self._timeline = Timeline(start=0.0 if live else None)
        self._wall0: float | None = None  # monotonic clock at the first frame
        self._rebase_pending = False
        self._declares_end = False  # the input declares a duration, or a byte size (set by `_open`)
        self._origin = 0.0  # the input's first timestamp, which counts as 0 (set by `_open`)
        self._aspect: Fraction | None = None  # the input's pixel aspect, when not square (set by `_open`)
        self._container, self._stream = self._open()  # fail fast: a bad URL or device is reported now

    # -- opening --------------------------------------------------------------------------------------
    def _not_found(self, error: Exception) -> SourceError:
        """The error for an input that does not exist (a device source says which devices do)."""
        return SourceNotFoundError(f"cannot open {self.source_id}: not found ({self._why(error)})")

    def _why(self, error: Exception) -> str:
        """An FFmpeg error's text, as put in livevlm's errors (a URL source leaves its password out)."""
        return str(error)

    def _hides_secret(self) -> bool:
        """Whether `source_id` leaves out a secret FFmpeg's errors name (a URL's password)."""
        return False

    def _raise(self, error: SourceError | ConfigError, cause: Exception) -> NoReturn:
        """Raise `error` from FFmpeg's `cause`, or, where its text would show a password (a logged traceback
        prints the whole chain), from nothing: `error`'s own message already holds the cause, redacted.
        Called outside the `except` block, so the cause is not kept as the implicit context either."""
        if self._hides_secret():
            raise error from None
        raise error from cause

    def _open(self) -> tuple[Any, Any]:
        """Open the input and pick its best video stream, mapping PyAV failures to typed errors."""
        require_av()
        spec, (open_timeout, _) = self.spec, self.timeouts
        start = time.monotonic()
        failure: tuple[SourceError | ConfigError, Exception] | None = None
        try:
            opening = partial(av.open, spec.file, format=spec.format, options=dict(spec.options), timeout=self.timeouts)
            container = open_interruptibly(opening, lambda c: c.close()) if self._network else opening()
        except (FileNotFoundError, av.error.HTTPNotFoundError) as e:
            failure = self._not_found(e), e
        except ConnectionError as e:
            failure = SourceConnectionError(f"cannot connect to {self.source_id}: {self._why(e)}"), e
        except av.error.LookupError as e:  # a protocol, filter or demuxer this FFmpeg does not have
            failure = ConfigError(f"cannot open {self.source_id}: {self._why(e)}"), e
        except (av.FFmpegError, OSError) as e:
            if isinstance(e, av.ExitError) or time.monotonic() - start >= 0.9 * open_timeout:
                failure = SourceTimeoutError(
                    f"cannot open {self.source_id}: no answer within open_timeout={open_timeout}s "
                    f"({self._why(e)})"
                ), e
            else:
                failure = self._open_error(f"cannot open {self.source_id}: {self._why(e)}"), e
        except ValueError as e:  # PyAV: an unknown input format name
            failure = ConfigError(f"cannot open {self.source_id}: {self._why(e)}"), e
        if failure is not None:
            self._raise(*failure)
        stream = container.streams.best("video")
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            container.close()
            raise NotAVideoError(f"not a video: {self.source_id} has no video stream (streams: {kinds})")
        if container.format is not None and container.format.name.startswith("mpegts"):
            self._timeline.wrap_seconds = _TS_WRAP_SECONDS
        rate = _stream_rate(stream)
        self._timeline.period = 1 / rate if rate else self._timeline.period
        self.frame_period = self._timeline.period
        self.declared_duration = declared_duration(container, stream)
        self._origin = start_seconds(container)
        self._aspect = pixel_aspect(stream)
        self._declares_end = (container.duration is not None or self.declared_duration is not None
                              or _has_byte_size(container))  # fmt: skip
        return container, stream

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    # -- reading --------------------------------------------------------------------------------------
    def _run(self) -> Iterator[Frame]:
        failures = 0
        resume_at: float | None = None  # a download read on after a break: from this stream time
        corrupt_at_last_frame = 0
        while not self.stopped:
            decoded_before, yielded_before = self.stats.frames_decoded, self.stats.frames_yielded
            failure: tuple[SourceError, Exception] | None = None
            try:
                for frame in self._read_connection(resume_at):
                    corrupt_at_last_frame = self.stats.frames_corrupt
                    yield frame
                    if self._done():
                        return
                if self.reconnect is None:
                    self._exhausted = not self.stopped
                    self._check_not_empty()
                    return
                cause = "the stream ended"
            except (av.FFmpegError, OSError) as e:
                timed_out = isinstance(e, av.ExitError)
                cause = f"read failed: {self._why(e)}"
                cause = f"no data within read_timeout={self.timeouts[1]}s" if timed_out else cause
                if self.reconnect is None and not self._resumable():
                    cls = SourceTimeoutError if timed_out else SourceError
                    failure = cls(f"cannot read {self.source_id}: {cause}"), e
            if failure is not None:
                self._raise(*failure)
            if self.stopped:
                return
            self.stats.disconnects += 1
            self.stats.last_error = cause
            self._release()
            if self.reconnect is not None:
                failures = 0 if self.stats.frames_decoded > decoded_before else failures  # it worked for a while
                failures = self._reconnect(failures, cause, self.reconnect)
                continue
            failures = 0 if self.stats.frames_yielded > yielded_before else failures  # read on past the last break
            self.stats.frames_corrupt = corrupt_at_last_frame  # the packet the break cut short is read again
            try:  # a download that broke: the same file again, read on from where it broke
                failures = self._reconnect(failures, cause, self.resume, rebase=False)
            except SourceDisconnectedError as e:
                if not self.stats.frames_yielded:
                    raise
                self._broken, self._exhausted = str(e), True  # what was read stays read: `shortfall` says why
                return
            resume_at = self._last_yielded

    def _check_not_empty(self) -> None:
        """An input that ended without a single frame is an error, as an empty file is (`EmptyVideoError`):
        asked about, it would be answered without any video."""
        s = self.stats
        if s.frames_yielded == 0 and not self.stopped:
            raise EmptyVideoError(
                f"empty video: {self.source_id} ended without a frame "
                f"(decoded {s.frames_decoded}, corrupt packets {s.frames_corrupt})"
            )

    @property
    def endless(self) -> bool:
        """Endless unless bounded by `max_frames` or `duration_seconds`, or not live and of a declared duration
        (a URL to a file). A lavfi graph declares none: it counts as endless even if the graph itself ends."""
        if self.max_frames is not None or self.duration_seconds is not None:
            return False
        return self.reconnect is not None or not self._declares_end

    def _done(self) -> bool:
        s = self.stats
        if self.max_frames is not None and s.frames_yielded >= self.max_frames:
            return True
        return self.duration_seconds is not None and (s.last_pts_seconds or 0.0) >= self.duration_seconds

    def _read_connection(self, resume_at: float | None = None) -> Iterator[Frame]:
        """Frames of the current connection, sampled (and, for a file by URL, held: `_holds`); a download opened
        again after a break yields only frames after `resume_at`, the last one yielded before it."""
        decoded = self._decoded() if resume_at is None else self._decoded_after(resume_at)
        if self._holds():
            picked = schedule(decoded, self._sampler, self._end)
        else:
            picked = ((t, frame, False) for t, frame in decoded if self._sampler.keep(t))
        last: tuple[Any, Any] | None = None  # the last frame converted, for its repeats
        for t, frame, repeated in picked:
            if not self.pacer.wait(t):
                return
            if repeated and last is not None and last[0] is frame:
                data = last[1].copy()
            else:
                data = rgb_array(frame, self.max_input_pixels, self.stats, self._aspect)
                last = (frame, data)
            self.stats.frames_yielded += 1
            self._last_yielded = t
            yield Frame(data, t, self.source_id)

    def _holds(self) -> bool:
        """Whether an instant no frame reaches gets the frame on screen again, as a file read does (`schedule`):
        only for an input that ends (not live, a declared duration: a URL to a file). A live stream, a camera
        or a lavfi graph yields only frames that arrived."""
        return self.hold and self.reconnect is None and self._declares_end

    def _end(self, t: float, frame: Any) -> float | None:
        """When the last frame leaves the screen (as `FileSource`): after its duration, within the declared
        duration."""
        if self.declared_duration is None:
            return None
        return min(t + min(_frame_seconds(frame), MAX_HOLD_SECONDS), self.declared_duration)

    def _decoded(self) -> Iterator[tuple[float, Any]]:
        """Decoded frames of the current connection with their stream time; damaged packets are skipped and
        counted."""
        anchor: tuple[float, int] | None = None  # (raw seconds, index) of the last frame with a pts
        index = 0
        for packet in self._container.demux(self._stream):
            if self.stopped:
                return
            damaged = bool(getattr(packet, "is_corrupt", False))  # flagged by the demuxer (MPEG-TS, RTP)
            self.stats.frames_corrupt += damaged
            try:
                decoded = packet.decode()
            except (av.FFmpegError, OSError):  # damaged data (or a lost UDP packet): skip, keep going
                self.stats.frames_corrupt += not damaged
                continue
            for frame in decoded:
                if frame.pts is not None and frame.time_base is not None:
                    anchor = (float(frame.pts * frame.time_base) - self._origin, index)
                raw = anchor[0] + (index - anchor[1]) * self._timeline.period if anchor else None
                index += 1
                t = self._clock(raw)
                self.stats.frames_decoded += 1
                self.stats.last_pts_seconds = t
                yield t, frame

    def _clock(self, raw: float | None) -> float:
        """Stream time of a frame (raw None: no pts yet); a reconnect restarts at the wall-clock time."""
        now = time.monotonic()
        self._wall0 = now if self._wall0 is None else self._wall0
        before = None
        if self._rebase_pending:
            self._rebase_pending = False
            before = self._timeline.last
            self._timeline.rebase(now - self._wall0)
        t = self._timeline.tick() if raw is None else self._timeline(raw)
        if before is not None:
            self.stats.gap_seconds += max(0.0, t - before - self._timeline.period)
            self.stats.last_gap = (before, t)
        return t

    def _reconnect(self, failures: int, cause: str, cfg: ReconnectConfig | None, rebase: bool = True) -> int:
        """Reopen with exponential backoff and jitter; returns the failure count, raises when out of tries. A live
        stream's clock goes on from the wall-clock time (`rebase`); a download's is the file's own."""
        cfg = cfg or ReconnectConfig(max_retries=0)
        first_loss = time.monotonic()
        while True:
            if failures >= cfg.max_retries:
                raise SourceDisconnectedError(
                    f"lost {self.source_id} ({cause}); gave up after {failures} failed reconnect attempts "
                    f"over {time.monotonic() - first_loss:.1f}s (last error: {self.stats.last_error})"
                )
            if self._stop.wait(cfg.delay(failures, self._rng)):
                return failures
            try:
                self._container, self._stream = self._open()
            except SourceError as e:
                failures += 1
                self.stats.last_error = str(e)
                continue
            self.stats.reconnects += 1
            self._rebase_pending = rebase
            return failures + 1
