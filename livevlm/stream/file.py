"""`FileSource`: decode a video file and yield RGB `Frame`s sampled at a target fps.

path ─► av.open ─► demux(best video stream) ─► decode ─► Sampler: t0 + k/fps ─► Pacer ─► Frame(rgb24, pts)
                     damaged packets are skipped and counted in `stats.frames_corrupt`;
                     an instant no frame reaches (a still stretch of a variable-rate file, a source slower than
                     fps) repeats the frame on screen, as a player shows it (`_Hold`)
backend='decord': the demuxer gives every timestamp, the same schedule picks, decord decodes only those (a
file decord cannot read as PyAV does falls back to PyAV, logged: see `_decord`).
Frames above `max_input_pixels` are scaled down in the conversion to RGB (`rgb_array`), never decoded to a
full-size RGB array, and turned upright when the file says how to display it (a phone video's rotation);
non-square pixels (anamorphic DVD, DV, HDV) are stretched to the display aspect, as a player shows them.
Times count from the file's start (a recording's MPEG-TS clock may start at 10 h: its first frame is still ~0).
After the read, `shortfall()` says what the file promised and the read did not give.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmptyVideoError, NotAVideoError, SourceError, SourceNotFoundError
from . import _decord
from ._damage import Losses
from ._schedule import MAX_HOLD_SECONDS, schedule
from .base import Source, SourceStats
from .config import FileSourceConfig
from .frame import Frame, fit_size
from .sampler import Pacer, Sampler

try:
    import av
except ImportError:  # a training-only install (no decoder): livevlm imports, opening a video says why not
    av = None

__all__ = ["FileSource", "FileSourceConfig", "SourceStats", "VideoInfo", "probe", "read_frames"]
logger = logging.getLogger(__name__)

_MAX_DEMUX_RETRIES = 8  # consecutive container read errors before giving up


@dataclass(frozen=True)
class VideoInfo:
    """Container-level facts about a video file, from its headers (no decoding)."""

    duration_seconds: float | None
    fps: float | None
    width: int
    height: int
    frame_count: int | None
    """Frame count from the index when present, else estimated as duration * fps."""


def require_av() -> None:
    """Raise `SourceError` when PyAV is not installed (decoding files and streams needs it; pushing frames not)."""
    if av is None:
        raise SourceError("decoding video needs PyAV, which is not installed: `pip install av`")


def _is_mp4(path: Path) -> bool:
    """Whether `path` starts like an MP4 / MOV (an 'ftyp' box): only then can a lost index be the cause."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return False


def _open(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and pick its best video stream, mapping PyAV failures to livevlm errors."""
    require_av()
    if not path.exists():
        raise SourceNotFoundError(f"video file not found: {path}")
    if path.is_dir():
        raise NotAVideoError(f"not a video: {path} is a folder; give a video file in it")
    if path.is_file() and path.stat().st_size == 0:
        raise NotAVideoError(f"not a video: {path} is empty (0 bytes)")
    try:
        container = av.open(str(path.absolute()))  # (relative "10:30.mp4" would be read as protocol "10")
    except (FileNotFoundError, PermissionError) as e:
        cls = SourceNotFoundError if isinstance(e, FileNotFoundError) else SourceError
        raise cls(f"cannot open video file {path}: {e.strerror or e}") from e
    except (av.FFmpegError, OSError) as e:
        raise NotAVideoError(
            f"not a video: FFmpeg cannot open {path} ({e})"
            + ("; a truncated mp4 that lost its index (moov atom) also fails this way" if _is_mp4(path) else "")
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


def rgb_array(
    frame: av.VideoFrame, max_pixels: int | None, stats: SourceStats, aspect: Fraction | None = None
) -> np.ndarray:
    """The frame as uint8 RGB (H, W, 3), as a player shows it: its width scaled by the pixel `aspect` (see
    `pixel_aspect`), then upright (`upright`); above `max_pixels`, scaled (area) by FFmpeg in the same
    conversion."""
    shown = (frame.height, display_width(frame.width, aspect))
    size = fit_size(*shown, max_pixels)
    if size == (frame.height, frame.width):
        return upright(frame.to_ndarray(format="rgb24"), frame)
    stats.frames_downscaled += size != shown
    smaller = size[0] <= frame.height and size[1] <= frame.width
    data = frame.to_ndarray(
        width=size[1], height=size[0], format="rgb24", interpolation="AREA" if smaller else "BICUBIC"
    )
    return upright(data, frame)


def pixel_aspect(stream: Any) -> Fraction | None:
    """The width:height of one stored pixel where it visibly changes the picture (anamorphic video: a 720x576
    widescreen DVD frame is shown 1024 wide, HDV's 1440x1080 1920 wide); else None.

    None for square pixels, an unknown aspect, one beyond 1:8..8:1 (a broken header), and one within 10 % of
    square (CIF's 12:11, NTSC DV's 10:11): every model resizes its input by as much to fit its patch grid, and
    stretching would only resample the frame."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or abs(sar - 1) < Fraction(1, 10) or not Fraction(1, 8) <= sar <= 8:
        return None
    return Fraction(sar)


def display_width(width: int, aspect: Fraction | None) -> int:
    """The width a player shows `width` stored pixels at (FFmpeg's `scale=iw*sar:ih`)."""
    return width if aspect is None else max(1, int(width * aspect))


def upright(data: np.ndarray, frame: av.VideoFrame) -> np.ndarray:
    """`data` turned by the frame's display rotation (a phone held upright records landscape pixels and a
    90-degree display matrix): the model sees what a player shows. Other angles than multiples of 90 are
    ignored, as FFmpeg does."""
    degrees = getattr(frame, "rotation", 0) or 0  # counterclockwise; PyAV < 13 has no `rotation`
    turns = round(degrees / 90)
    if turns % 4 == 0 or abs(degrees - 90 * turns) > 1:
        return data
    return np.ascontiguousarray(np.rot90(data, turns % 4))


def start_seconds(container: Any) -> float:
    """The container's first timestamp in seconds (0 when unknown), which a player shows as 0:00."""
    start = container.start_time
    return start / av.time_base if start is not None else 0.0


def declared_duration(container: Any, stream: Any, video_only: bool = True) -> float | None:
    """The duration the headers declare for `stream`, in seconds; None if none.

    When the stream declares none (Matroska, WebM), the container's duration is used: with `video_only`, only
    if the video is its only stream (another, e.g. a longer audio track, would overstate the video's). A
    Matroska file whose timestamps start late (remuxed with their original clock) declares its end time there,
    not its length: the start is taken off.
    """
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and (not video_only or len(container.streams) == 1):
        seconds = container.duration / av.time_base
        start = start_seconds(container)
        matroska = container.format is not None and container.format.name.startswith("matroska")
        if matroska and 0 < start < seconds:
            seconds -= start
        return seconds
    return None


def _stream_rate(stream: av.VideoStream, average: bool = False) -> float | None:
    """FFmpeg's guessed (or, with `average`, mean) frame rate of `stream`; None when unknown.

    The guess is the right frame period for streams without timestamps (raw H.264, where the mean is 25).
    """
    rates = (
        (stream.average_rate, stream.guessed_rate) if average else (stream.guessed_rate, stream.average_rate)
    )
    rate = rates[0] or rates[1] or stream.base_rate
    return float(rate) if rate else None


class FileSource(Source):
    """Iterate sampled RGB frames of a video file: `with FileSource(cfg) as src: for f in src: ...`."""

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(str(config.path))
        self.config = config
        self.path: Path = Path(config.path)
        backend = config.backend
        if backend == "auto":
            backend = "decord" if _decord.available() else "av"
        self.backend = backend
        self.live = config.realtime  # a file paced in real time stands in for a camera
        self._container, self._stream = _open(self.path)
        self._rate = _stream_rate(self._stream)
        self.declared_duration = declared_duration(self._container, self._stream)
        self.frame_period = 1 / self._rate if self._rate else None
        self._origin = start_seconds(self._container)  # shown as 0:00
        self._aspect = pixel_aspect(self._stream)
        self._anchor = (0.0, 0)  # (seconds, frame index) of the last frame that had a pts
        self._losses = Losses(self._container, self.frame_period)
        self.pacer = Pacer(config.realtime, self._stop)
        self.fallback: str | None = None
        """Why decord was asked for and PyAV reads this file (None: the backend asked for, or 'auto')."""
        self._decord: tuple[Any, _decord.FrameIndex, bool] | None = None  # (reader, index, downscaled)
        if backend == "decord":
            self._open_decord(config.backend == "decord")

    def _open_decord(self, asked: bool) -> None:
        """Read with decord, or keep PyAV (logged, in `fallback`) where decord would read otherwise."""
        index = _decord.frame_index(self._container, self._stream, self._origin)
        if not isinstance(index, str):
            h, w = self._stream.codec_context.height, self._stream.codec_context.width
            shown = (h, display_width(w, self._aspect))
            size = fit_size(*shown, self.config.max_input_pixels)
            reader = _decord.open_reader(self.path, size if size != (h, w) else None)
            index = _decord.disagreement(reader, index) or index
            self._decord = None if isinstance(index, str) else (reader, index, size != shown)
        self._container.close()
        if self._decord is not None:
            self._container = None
            return
        self.backend, self.fallback = "av", str(index)
        (logger.warning if asked else logger.info)("%s: read with PyAV, not decord: %s", self.path, index)
        self._container, self._stream = _open(self.path)

    @property
    def endless(self) -> bool:
        """A file always ends (even paced in real time)."""
        return False

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._decord = None

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
        """Decoded frames with their time in seconds; undecodable packets are skipped and counted, and so are
        packets the demuxer flags as damaged (MPEG-TS skips the bad bytes, then decodes what is left)."""
        for packet in self._packets():
            self._losses.packet(packet)
            damaged = bool(getattr(packet, "is_corrupt", False))
            self.stats.frames_corrupt += damaged
            try:
                frames = packet.decode()
            except (av.FFmpegError, OSError):  # damaged data mid-file: skip this packet, keep going
                self.stats.frames_corrupt += not damaged
                continue
            for frame in frames:
                t = self._seconds(frame)
                self._losses.frame(t)
                self.stats.frames_decoded += 1
                self.stats.last_pts_seconds = t
                yield t, frame
        self._exhausted = True  # the demuxer reached the end of the data
        self._losses.finish(self._container, self._stream, self._origin, self.stats)

    def _seconds(self, frame: av.VideoFrame) -> float:
        """The frame's pts in seconds from the file's start; without pts, the last real pts plus frames since
        then / stream rate."""
        index = self.stats.frames_decoded
        if frame.pts is not None and frame.time_base is not None:
            self._anchor = (float(frame.pts * frame.time_base) - self._origin, index)
            return self._anchor[0]
        anchor_t, anchor_index = self._anchor
        return anchor_t + (index - anchor_index) / (self._rate or 30.0)

    def _run(self) -> Iterator[Frame]:
        cfg, start = self.config, float(self.config.start_seconds)
        sampler = (Sampler(cfg.fps, start if start > 0 else None) if cfg.resume_after is None
                   else Sampler.after(cfg.fps, *cfg.resume_after))  # the whole read's, as after its frame at `last`
        start = sampler.start or 0.0
        if self._decord is not None:
            reader, index, downscaled = self._decord
            yield from _decord.decord_frames(
                reader,
                index,
                self.path,
                sampler,
                self.stats,
                cfg.max_frames,
                self.pacer.wait,
                self.declared_duration,
                downscaled,
            )
            self._exhausted = not self.stopped and (
                cfg.max_frames is None or self.stats.frames_yielded < cfg.max_frames
            )
        else:
            yield from self._run_av(sampler, start)
        if self.stats.frames_yielded == 0 and not self.stopped:
            where = f" at or after start_seconds={start}" if start > 0 else ""
            raise EmptyVideoError(
                f"empty video: {self.path} yielded no frames{where} "
                f"(decoded {self.stats.frames_decoded}, corrupt packets {self.stats.frames_corrupt})"
            )

    def _run_av(self, sampler: Sampler, start: float) -> Iterator[Frame]:
        frames = self._seek(start) if start > 0 and self._stream.time_base is not None else self._decoded()
        last: tuple[av.VideoFrame, np.ndarray] | None = None  # the last frame converted, for its repeats
        for t, frame, repeated in schedule(frames, sampler, self._end):
            if not self.pacer.wait(t):
                return
            if repeated and last is not None and last[0] is frame:
                data = last[1].copy()
            else:
                data = rgb_array(frame, self.config.max_input_pixels, self.stats, self._aspect)
                last = (frame, data)
            self.stats.frames_yielded += 1
            yield Frame(data, t, str(self.path))
            if self.config.max_frames is not None and self.stats.frames_yielded >= self.config.max_frames:
                return

    def _end(self, t: float, frame: av.VideoFrame) -> float | None:
        """When the last frame leaves the screen: after its duration, within what the headers say the video
        lasts (None when they say nothing)."""
        if self.declared_duration is None:
            return None
        return min(t + min(_frame_seconds(frame), MAX_HOLD_SECONDS), self.declared_duration)

    def _seek(self, start: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decoded frames from a keyframe at or before `start`. An indexed file (mp4, mkv) seeks there at
        once; MPEG-TS has no index and FFmpeg may land on the keyframe after it, so it seeks again, ever
        earlier. A file that cannot seek (raw H.264) is decoded from its start (the sampler skips the frames
        before `start`)."""
        margin = 0.0
        while True:
            target = max(0.0, start - margin)
            try:
                at = int((target + self._origin) / self._stream.time_base)
                self._container.seek(at, stream=self._stream)
            except (av.FFmpegError, OSError):
                self._container.close()
                self._container, self._stream = _open(self.path)
                yield from self._decoded()
                return
            frames = self._decoded()
            first = next(frames, None)
            if first is None or first[0] <= start + 1e-6 or target == 0.0:
                break
            frames.close()  # landed after `start`: frames between it and the landing would be lost
            margin = max(1.0, 2 * margin)
        if first is not None:
            yield first
            yield from frames


def _frame_seconds(frame: av.VideoFrame) -> float:
    """How long `frame` is shown (its duration in the container); 0 when the file does not say."""
    duration, base = getattr(frame, "duration", None), frame.time_base
    return float(duration * base) if duration and base is not None and duration > 0 else 0.0


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
        duration = declared_duration(container, stream, video_only=False)
        count = stream.frames or (round(duration * fps) if duration and fps else None)
        return VideoInfo(duration, fps, stream.codec_context.width, stream.codec_context.height, count)
    finally:
        container.close()
