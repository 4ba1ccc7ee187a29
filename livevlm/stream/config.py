"""Source configs: plain dataclasses that import no backend (PyAV, decord), validated at construction."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

FILE_BACKENDS = ("av", "decord", "auto")
TRANSPORTS = ("tcp", "udp", "udp_multicast", "http")
BUFFER_POLICIES = ("latest", "block")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp")

MAX_INPUT_PIXELS = 4096 * 4096
"""Default cap on the pixels of one input frame (16.7 MP: 4K UHD and DCI 4K pass untouched).

A larger frame is downscaled as early as possible: decoded video in FFmpeg's reformat to RGB (aspect kept,
the full-size RGB array never exists), pushed arrays by a block average (`livevlm.stream.fit_frame`).
Sources count such frames in `SourceStats.frames_downscaled`; the model resizes to its own size later anyway.
"""


MAX_FPS = 1000.0
"""The highest sampling rate taken (a high-speed camera's); more is a typo (1e9 built lists of every instant)."""


def _check_fps(owner: str, fps: float | None) -> None:
    if fps is not None and not (isinstance(fps, (int, float)) and 0 < fps < math.inf):
        raise ConfigError(f"{owner}.fps must be a positive number or None, got {fps!r}")
    if fps is not None and fps > MAX_FPS:
        raise ConfigError(f"{owner}.fps must be at most {MAX_FPS:g} frames per second, got {fps:g}")


def _check_count(owner: str, name: str, value: int | None, low: int = 1, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(
            f"{owner}.{name} must be an int >= {low}{' or None' if optional else ''}, got {value!r}"
        )


def _check_seconds(owner: str, name: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ConfigError(f"{owner}.{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True)
class ReconnectConfig:
    """How a live source retries after its connection drops: exponential backoff with jitter. The defaults keep
    trying for about 85 s (0.5, 1, 2, 4, 8, then every 10 s): long enough for an IP camera to reboot."""

    max_retries: int = 12
    """Failed attempts in a row before giving up with `SourceDisconnectedError` (0: never retry)."""
    initial_delay: float = 0.5
    """Seconds to wait before the first attempt."""
    max_delay: float = 10.0
    """Cap on the wait between attempts."""
    multiplier: float = 2.0
    """Each wait is this many times the previous one (until `max_delay`)."""
    jitter: float = 0.2
    """Each wait is scaled by a random factor in [1 - jitter, 1 + jitter] so cameras do not retry in step."""

    def __post_init__(self) -> None:
        _check_count("ReconnectConfig", "max_retries", self.max_retries, low=0, optional=False)
        _check_seconds("ReconnectConfig", "initial_delay", self.initial_delay)
        _check_seconds("ReconnectConfig", "max_delay", self.max_delay)
        if not (isinstance(self.multiplier, (int, float)) and 1 <= self.multiplier < math.inf):
            raise ConfigError(f"ReconnectConfig.multiplier must be >= 1, got {self.multiplier!r}")
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter < 1):
            raise ConfigError(f"ReconnectConfig.jitter must be in [0, 1), got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt number `attempt` (0-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier**attempt)
        return base * (1 + self.jitter * rng.uniform(-1.0, 1.0))


def _check_resume_after(value: object, start_seconds: float) -> None:
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < math.inf for t in value)
    if not ok or value[0] > value[1]:  # type: ignore[index]
        raise ConfigError(f"FileSourceConfig.resume_after must be (first, last) times with 0 <= first <= last, "
                          f"got {value!r}")  # fmt: skip
    if start_seconds:
        raise ConfigError("FileSourceConfig.resume_after replaces start_seconds: give one of them")


@dataclass(frozen=True)
class FileSourceConfig:
    """What to read from a video file and how densely to sample it."""

    path: str | os.PathLike[str]
    fps: float | None = 2.0
    """Target sampling rate in frames per second; None keeps every decoded frame."""
    max_frames: int | None = None
    """Stop after yielding this many frames; None reads to the end."""
    start_seconds: float = 0.0
    """Seek here and skip frames whose presentation time is before it (0: from the first frame)."""
    resume_after: tuple[float, float] | None = None
    """(first, last): continue an earlier read at the same fps whose first frame was at `first` seconds and whose
    last was at `last`: this read yields what the whole read would have yielded after `last` (the same sampling
    instants, a frame held over those no frame reaches), reading the file from there. Replaces start_seconds."""
    backend: str = "av"
    """'av' (PyAV, skips and counts damaged packets), 'decord' (random access), 'auto' (decord if installed).
    A file decord cannot read as PyAV does (rotated, damaged, without timestamps) is read by PyAV: logged, and
    `FileSource.fallback` says why."""
    realtime: bool = False
    """Yield frames at the pace of their timestamps, like a camera; False reads as fast as possible."""
    max_input_pixels: int | None = MAX_INPUT_PIXELS
    """Frames with more pixels are downscaled (aspect kept) in the decoder; None: no cap."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ConfigError(f"FileSourceConfig.path must be a non-empty path, got {self.path!r}")
        object.__setattr__(self, "path", Path(self.path))
        _check_fps("FileSourceConfig", self.fps)
        _check_count("FileSourceConfig", "max_frames", self.max_frames)
        _check_count("FileSourceConfig", "max_input_pixels", self.max_input_pixels)
        if not (isinstance(self.start_seconds, (int, float)) and 0 <= self.start_seconds < math.inf):
            raise ConfigError(
                f"FileSourceConfig.start_seconds must be finite and >= 0, got {self.start_seconds!r}"
            )
        if self.resume_after is not None:
            _check_resume_after(self.resume_after, self.start_seconds)
            object.__setattr__(self, "resume_after", tuple(self.resume_after))  # a list from JSON too
        if self.backend not in FILE_BACKENDS:
            raise ConfigError(
                f"FileSourceConfig.backend must be one of {FILE_BACKENDS}, got {self.backend!r}"
            )


@dataclass(frozen=True)
class UrlSourceConfig:
    """A stream FFmpeg opens by URL: rtsp://, http(s)://, rtmp://, udp://, srt://, ..."""

    url: str
    fps: float | None = 2.0
    """Target sampling rate; None keeps every decoded frame."""
    transport: str | None = "tcp"
    """RTSP lower transport: 'tcp' (interleaved, robust), 'udp', 'udp_multicast', 'http'; None: FFmpeg's."""
    open_timeout: float = 10.0
    """Seconds to wait for the connection and the stream headers."""
    read_timeout: float = 5.0
    """Seconds without data before a read fails (then a live source reconnects)."""
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    """Retry policy after a live connection drops, or a URL to a file whose download breaks (opened again and read
    on from the last frame; out of tries, the read ends there and `shortfall()` says so). The first open fails at
    once with a typed error."""
    live: bool | None = None
    """Treat the end of the stream as a dropped connection; None: True for rtsp/rtmp/udp/srt/rtp/tcp URLs."""
    max_frames: int | None = None
    """Stop after yielding this many frames."""
    format: str | None = None
    """Force an FFmpeg input format (e.g. 'mpegts'); None lets FFmpeg probe."""
    options: dict[str, str] = field(default_factory=dict)
    """Extra FFmpeg demuxer/protocol options, e.g. {'buffer_size': '1048576'}."""
    realtime: bool = False
    """Yield a URL to a file at the pace of its timestamps; False reads it as fast as the network allows.
    A live stream (see `live`) arrives in real time whatever this says: no pacing is added on top."""
    max_input_pixels: int | None = MAX_INPUT_PIXELS
    """Frames with more pixels are downscaled (aspect kept) in the decoder; None: no cap."""

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or "://" not in self.url:
            raise ConfigError(f"UrlSourceConfig.url must look like scheme://..., got {self.url!r}")
        _check_fps("UrlSourceConfig", self.fps)
        if self.transport is not None and self.transport not in TRANSPORTS:
            raise ConfigError(
                f"UrlSourceConfig.transport must be one of {TRANSPORTS} or None, got {self.transport!r}"
            )
        _check_seconds("UrlSourceConfig", "open_timeout", self.open_timeout)
        _check_seconds("UrlSourceConfig", "read_timeout", self.read_timeout)
        _check_count("UrlSourceConfig", "max_frames", self.max_frames)
        _check_count("UrlSourceConfig", "max_input_pixels", self.max_input_pixels)

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def is_live(self) -> bool:
        """Whether the end of the stream means a dropped connection (to be retried)."""
        return self.scheme in LIVE_SCHEMES if self.live is None else bool(self.live)


@dataclass(frozen=True)
class WebcamConfig:
    """A local camera through FFmpeg's device input: v4l2 (Linux), avfoundation (macOS), dshow (Windows)."""

    device: int | str = 0
    """Index (0 = first camera) or name: '/dev/video2' or a card name on Linux, a device name elsewhere."""
    fps: float | None = 2.0
    """Target sampling rate; None keeps every captured frame."""
    capture_size: tuple[int, int] | None = None
    """Requested (width, height) from the camera; None: the camera's default."""
    capture_fps: float | None = None
    """Requested camera frame rate; None: the default (avfoundation needs one: 30 is used)."""
    input_format: str | None = None
    """Camera pixel/codec format, e.g. 'mjpeg' or 'yuyv422'; None: the camera's default."""
    platform: str | None = None
    """'linux', 'darwin' or 'win32'; None: this machine's."""
    open_timeout: float = 10.0
    """Seconds to wait for the device to open."""
    read_timeout: float = 5.0
    """Seconds without a frame before the camera counts as lost (then it is reopened)."""
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    """Retry policy when the camera vanishes (unplugged, driver reset)."""
    max_frames: int | None = None
    """Stop after yielding this many frames; None runs until closed."""
    max_input_pixels: int | None = MAX_INPUT_PIXELS
    """Frames with more pixels are downscaled (aspect kept) in the decoder; None: no cap."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.device, bool)
            or not isinstance(self.device, (int, str))
            or self.device in ("", -1)
        ):
            raise ConfigError(f"WebcamConfig.device must be an index >= 0 or a name, got {self.device!r}")
        if isinstance(self.device, int) and self.device < 0:
            raise ConfigError(f"WebcamConfig.device index must be >= 0, got {self.device}")
        _check_fps("WebcamConfig", self.fps)
        _check_seconds("WebcamConfig", "capture_fps", self.capture_fps, optional=True)
        if self.capture_size is not None and (
            len(self.capture_size) != 2 or not all(isinstance(v, int) and v > 0 for v in self.capture_size)
        ):
            raise ConfigError(f"WebcamConfig.capture_size must be (width, height), got {self.capture_size!r}")
        if self.platform is not None and self.platform not in ("linux", "darwin", "win32"):
            raise ConfigError(f"WebcamConfig.platform must be linux, darwin or win32, got {self.platform!r}")
        _check_seconds("WebcamConfig", "open_timeout", self.open_timeout)
        _check_seconds("WebcamConfig", "read_timeout", self.read_timeout)
        _check_count("WebcamConfig", "max_frames", self.max_frames)
        _check_count("WebcamConfig", "max_input_pixels", self.max_input_pixels)


@dataclass(frozen=True)
class LavfiConfig:
    """An FFmpeg lavfi test source (testsrc2, mandelbrot, smptehdbars, ...): endless synthetic video."""

    graph: str = "testsrc2=size=320x240:rate=30"
    """The lavfi filter graph, as after `ffmpeg -f lavfi -i`."""
    fps: float | None = 2.0
    """Target sampling rate; None keeps every generated frame."""
    realtime: bool = True
    """Generate at the graph's own rate, like a camera; False generates as fast as possible."""
    max_frames: int | None = None
    """Stop after yielding this many frames; None runs until closed."""
    duration_seconds: float | None = None
    """Stop at this stream time; None runs until closed."""
    max_input_pixels: int | None = MAX_INPUT_PIXELS
    """Frames with more pixels are downscaled (aspect kept) in the decoder; None: no cap."""

    def __post_init__(self) -> None:
        if not isinstance(self.graph, str) or not self.graph.strip():
            raise ConfigError(f"LavfiConfig.graph must be a non-empty filter graph, got {self.graph!r}")
        _check_fps("LavfiConfig", self.fps)
        _check_count("LavfiConfig", "max_frames", self.max_frames)
        _check_seconds("LavfiConfig", "duration_seconds", self.duration_seconds, optional=True)
        _check_count("LavfiConfig", "max_input_pixels", self.max_input_pixels)


@dataclass(frozen=True)
class ReaderConfig:
    """The bounded buffer between a source's reader thread and its consumer."""

    capacity: int = 8
    """Most frames held at once; memory stays bounded whatever the speeds."""
    policy: str | None = None
    """When full: 'latest' drops the oldest frame (live Q&A), 'block' waits (files); None: by source."""
    join_timeout: float = 10.0
    """Seconds `close()` waits for the reader thread to finish its current read."""

    def __post_init__(self) -> None:
        _check_count("ReaderConfig", "capacity", self.capacity, optional=False)
        if self.policy is not None and self.policy not in BUFFER_POLICIES:
            raise ConfigError(
                f"ReaderConfig.policy must be one of {BUFFER_POLICIES} or None, got {self.policy!r}"
            )
        _check_seconds("ReaderConfig", "join_timeout", self.join_timeout)
