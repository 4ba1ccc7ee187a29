"""`open_source`: from a user's string (path, URL, device, lavfi graph) or a config to a running source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import Source
from .config import FileSourceConfig, LavfiConfig, UrlSourceConfig, WebcamConfig
from .reader import LiveReader

SOURCES: Registry = Registry("source")
"""Source kind -> class built as `cls(config)`, with its config dataclass (imported on first use)."""
SOURCES.register("file", "livevlm.stream.file:FileSource", config=FileSourceConfig)
SOURCES.register("url", "livevlm.stream.url:UrlSource", config=UrlSourceConfig)
SOURCES.register("webcam", "livevlm.stream.webcam:WebcamSource", config=WebcamConfig)
SOURCES.register("lavfi", "livevlm.stream.lavfi:LavfiSource", config=LavfiConfig)
SOURCES.register("push", "livevlm.stream.push:PushSource")


def build_source(kind: str, config: Any) -> Source:
    """A source of a registered kind from its config."""
    return SOURCES.load(kind)(config)


def open_source(
    source: Any,
    *,
    fps: float | None = 2.0,
    realtime: bool | None = None,
    transport: str | None = "tcp",
    max_frames: int | None = None,
    live: bool | None = None,
) -> Source | LiveReader:
    """Open `source`, sampled at `fps`; a Source, LiveReader or config passes through as is (its own settings).

    'clip.mp4' or 'file:///...'     a video file
    'rtsp://...', 'https://...'    any stream FFmpeg opens by URL (`transport` for RTSP: tcp or udp)
    'webcam:0', 'webcam:NAME', 0   a local camera by index or name; '/dev/video2' on Linux
    'lavfi:testsrc2=size=640x480:rate=30'   an FFmpeg test source

    `realtime`: True yields frames at the pace of their timestamps, False as fast as they can be read, None
    as the source goes by default: a file or a URL to a file as fast as possible, a lavfi graph in real time.
    A camera or a live stream (rtsp, rtmp, udp, srt, ...) arrives in real time whatever `realtime` says
    (`source.live` is True; no pacing is added). `max_frames`: stop after this many frames (None: no limit).
    `live`: for a URL, whether its end is a dropped connection to reconnect (`UrlSourceConfig.live`; None: by
    scheme); refused for other sources.
    """
    if isinstance(source, (Source, LiveReader)):
        return source
    entry = SOURCES.for_config(source)
    if entry is not None:
        return entry.load()(source)
    fast = realtime is False
    if isinstance(source, int) and not isinstance(source, bool):
        return build_source("webcam", WebcamConfig(source, fps=fps, max_frames=max_frames))
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ConfigError(f"cannot open {source!r}: give a path, URL, 'webcam:N', 'lavfi:GRAPH' or a config")
    text = str(source)
    if isinstance(source, str) and not Path(text).exists():
        kind, _, rest = text.partition(":")
        if live is not None and "://" not in text:
            raise ConfigError(f"live= (--live) applies to a URL, not to {text!r}")
        if kind in ("lavfi", "webcam", "camera") and not rest:
            example = "lavfi:testsrc2=size=640x480:rate=30" if kind == "lavfi" else f"{kind}:0"
            raise ConfigError(f"{text!r} names no {'graph' if kind == 'lavfi' else 'camera'}: e.g. {example!r}")
        if kind == "lavfi" and rest:
            return build_source("lavfi", LavfiConfig(rest, fps=fps, realtime=not fast, max_frames=max_frames))
        if kind in ("webcam", "camera") and rest:
            device = int(rest) if rest.isdigit() else rest
            return build_source("webcam", WebcamConfig(device, fps=fps, max_frames=max_frames))
        if text.startswith("/dev/video"):
            return build_source("webcam", WebcamConfig(text, fps=fps, max_frames=max_frames))
        if text.startswith("file://"):
            text = text[len("file://") :]
        elif "://" in text:
            cfg = UrlSourceConfig(
                text, fps=fps, transport=transport, realtime=bool(realtime), max_frames=max_frames, live=live
            )
            return build_source("url", cfg)
    if live is not None:
        raise ConfigError(f"live= (--live) applies to a URL, not to {text!r}")
    return build_source(
        "file", FileSourceConfig(text, fps=fps, realtime=bool(realtime), max_frames=max_frames)
    )
