"""`FileSource`: decode a video file with PyAV and yield RGB `Frame`s sampled at a target fps.

path ─► av.open ─► demux(best video stream) ─► decode ─► keep at t0 + k/fps ─► Frame(rgb24, pts)
                     damaged packets are skipped and counted in `stats.frames_corrupt`
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from ..errors import ConfigError, EmptyVideoError, NotAVideoError, SourceError, SourceNotFoundError
from .frame import Frame

if TYPE_CHECKING:
    from typing_extensions import Self

_EPS = 1e-6  # seconds of float slack when comparing a pts to a sampling instant
_MAX_DEMUX_RETRIES = 8  # consecutive container read errors before giving up


@dataclass(frozen=True)
class FileSourceConfig:
    """What to read from a video file and how densely to sample it."""

    path: str | os.PathLike[str]
    fps: float | None = 2.0
    """Target sampling rate in frames per second; None keeps every decoded frame."""
    max_frames: int | None = None
    """Stop after yielding this many frames; None reads to the end."""
    start_seconds: float = 0.0
    """Skip frames whose presentation time is before this."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ConfigError(f"FileSourceConfig.path must be a non-empty path, got {self.path!r}")
        object.__setattr__(self, "path", Path(self.path))
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and 0 < self.fps < math.inf):
            raise ConfigError(f"FileSourceConfig.fps must be a positive number or None, got {self.fps!r}")
        if self.max_frames is not None and (
            not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool) or self.max_frames < 1
        ):
            raise ConfigError(
                f"FileSourceConfig.max_frames must be an int >= 1 or None, got {self.max_frames!r}"
            )
        if not (isinstance(self.start_seconds, (int, float)) and 0 <= self.start_seconds < math.inf):
            raise ConfigError(
                f"FileSourceConfig.start_seconds must be finite and >= 0, got {self.start_seconds!r}"
            )


@dataclass
class SourceStats:
    """Counters a source keeps while it runs."""

    frames_decoded: int = 0
    frames_yielded: int = 0
    frames_corrupt: int = 0
    """Packets that failed to decode (or container reads that failed) and were skipped."""
    last_pts_seconds: float | None = None
    """Presentation time of the last decoded frame."""


@dataclass(frozen=True)
class VideoInfo:
    """Container-level facts about a video file, from its headers (no decoding)."""

    duration_seconds: float | None
    fps: float | None
    width: int
    height: int
    frame_count: int | None
    """Frame count from the index when present, else estimated as duration * fps."""


def _open(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and pick its best video stream, mapping PyAV failures to livevlm errors."""
    if not path.exists():
        raise SourceNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except (FileNotFoundError, PermissionError) as e:
        cls = SourceNotFoundError if isinstance(e, FileNotFoundError) else SourceError
        raise cls(f"cannot open video file {path}: {e.strerror or e}") from e
    except (av.FFmpegError, OSError) as e:
        raise NotAVideoError(
            f"not a video: FFmpeg cannot open {path} ({e}); a truncated mp4 that lost its index "
            "(moov atom) also fails this way"
        ) from e
    try:
        stream = container.streams.best("video")
    except (av.FFmpegError, OSError) as e:
        container.close()
        raise NotAVideoError(f"not a video: cannot select a video stream in {path} ({e})") from e
    if stream is None:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        container.close()
        raise NotAVideoError(f"not a video: {path} has no video stream (streams: {kinds})")
    return container, stream


def _stream_rate(stream: av.VideoStream, average: bool = False) -> float | None:
    """FFmpeg's guessed (or, with `average`, mean) frame rate of `stream`; None when unknown.

    The guess is the right frame period for streams without timestamps (raw H.264, where the mean is 25).
    """
    rates = (
        (stream.average_rate, stream.guessed_rate) if average else (stream.guessed_rate, stream.average_rate)
    )
    rate = rates[0] or rates[1] or stream.base_rate
    return float(rate) if rate else None


class FileSource:
    """Iterate sampled RGB frames of a video file: `with FileSource(cfg) as src: for f in src: ...`."""

    def __init__(self, config: FileSourceConfig) -> None:
        self.config = config
        self.path: Path = Path(config.path)
        self.stats = SourceStats()
        self._container, self._stream = _open(self.path)
        self._rate = _stream_rate(self._stream)
        self._anchor = (0.0, 0)  # (seconds, frame index) of the last frame that had a pts
        self._frames: Iterator[Frame] | None = self._run()
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Frame:
        if self._closed:
            raise SourceError(f"FileSource for {self.path} is closed")
        return next(self._frames)

    def close(self) -> None:
        """Release the decoder and the file; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._frames = None
            self._container.close()

    def _packets(self) -> Iterator[av.Packet]:
        """Demux the video stream, resuming after a failed container read (counted as corrupt)."""
        failures = 0
        while True:
            try:
                for packet in self._container.demux(self._stream):
                    failures = 0
                    yield packet
                return
            except (av.FFmpegError, OSError) as e:
                self.stats.frames_corrupt += 1
                failures += 1
                if failures > _MAX_DEMUX_RETRIES:
                    raise SourceError(
                        f"cannot read {self.path}: {failures} container read errors in a row "
                        f"after t={self.stats.last_pts_seconds}s ({e})"
                    ) from e

    def _decoded(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decoded frames with their time in seconds; undecodable packets are skipped and counted."""
        for packet in self._packets():
            try:
                frames = packet.decode()
            except (av.FFmpegError, OSError):  # damaged data mid-file: skip this packet, keep going
                self.stats.frames_corrupt += 1
                continue
            for frame in frames:
                t = self._seconds(frame)
                self.stats.frames_decoded += 1
                self.stats.last_pts_seconds = t
                yield t, frame

    def _seconds(self, frame: av.VideoFrame) -> float:
        """The frame's pts in seconds; without pts, the last real pts plus frames since then / stream rate."""
        index = self.stats.frames_decoded
        if frame.pts is not None and frame.time_base is not None:
            self._anchor = (float(frame.pts * frame.time_base), index)
            return self._anchor[0]
        anchor_t, anchor_index = self._anchor
        return anchor_t + (index - anchor_index) / (self._rate or 30.0)

    def _run(self) -> Iterator[Frame]:
        cfg, start = self.config, float(self.config.start_seconds)
        if start > 0 and self._stream.time_base is not None:
            try:
                self._container.seek(int(start / self._stream.time_base), stream=self._stream)
            except (av.FFmpegError, OSError) as e:
                raise SourceError(f"cannot seek {self.path} to {start}s ({e})") from e
        t0: float | None = None
        next_t = -math.inf
        for t, frame in self._decoded():
            if t + _EPS < max(start, next_t):
                continue
            if cfg.fps is not None:  # keep the first frame at or after each instant t0 + k / fps
                t0 = t if t0 is None else t0
                next_t = t0 + (math.floor((t - t0) * cfg.fps + _EPS) + 1) / cfg.fps
            self.stats.frames_yielded += 1
            yield Frame(frame.to_ndarray(format="rgb24"), t, str(self.path))
            if cfg.max_frames is not None and self.stats.frames_yielded >= cfg.max_frames:
                return
        if self.stats.frames_yielded == 0:
            where = f" at or after start_seconds={start}" if start > 0 else ""
            raise EmptyVideoError(
                f"empty video: {self.path} yielded no frames{where} "
                f"(decoded {self.stats.frames_decoded}, corrupt packets {self.stats.frames_corrupt})"
            )


def read_frames(
    path: str | os.PathLike[str], fps: float | None = 2.0, max_frames: int | None = None
) -> list[Frame]:
    """Decode `path` into a list of frames sampled at `fps` (None: every frame)."""
    with FileSource(FileSourceConfig(path, fps=fps, max_frames=max_frames)) as src:
        return list(src)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read duration, frame rate, size and frame count of `path`'s best video stream from its headers."""
    container, stream = _open(Path(path))
    try:
        fps = _stream_rate(stream, average=True)
        if stream.duration is not None and stream.time_base is not None:
            duration: float | None = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        count = stream.frames or (round(duration * fps) if duration and fps else None)
        return VideoInfo(duration, fps, stream.codec_context.width, stream.codec_context.height, count)
    finally:
        container.close()
