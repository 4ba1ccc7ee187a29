"""Video sources (file, URL/RTSP, webcam, lavfi, push), the `Frame` dataclasses, sampling and live reading.

Configs live in `livevlm.stream.config` and import no backend; decord is imported only when selected.
"""

from .base import Source, SourceStats
from .buffer import BufferStats, FrameBuffer
from .config import (
    MAX_INPUT_PIXELS,
    FileSourceConfig,
    LavfiConfig,
    ReaderConfig,
    ReconnectConfig,
    UrlSourceConfig,
    WebcamConfig,
)
from .file import FileSource, VideoInfo, probe, read_frames
from .frame import Frame, FrameBatch, fit_frame, fit_size
from .ingest import Ingestor, IngestStats
from .lavfi import LavfiSource
from .live import AVLiveSource
from .push import PushSource
from .reader import LiveReader, ReaderStats
from .sampler import Pacer, Sampler, Timeline
from .sources import SOURCES, build_source, open_source
from .url import UrlSource
from .webcam import WebcamSource, webcam_spec

__all__ = [
    "MAX_INPUT_PIXELS",
    "SOURCES",
    "AVLiveSource",
    "BufferStats",
    "FileSource",
    "FileSourceConfig",
    "Frame",
    "FrameBatch",
    "FrameBuffer",
    "IngestStats",
    "Ingestor",
    "LavfiConfig",
    "LavfiSource",
    "LiveReader",
    "Pacer",
    "PushSource",
    "ReaderConfig",
    "ReaderStats",
    "ReconnectConfig",
    "Sampler",
    "Source",
    "SourceStats",
    "Timeline",
    "UrlSource",
    "UrlSourceConfig",
    "VideoInfo",
    "WebcamConfig",
    "WebcamSource",
    "build_source",
    "fit_frame",
    "fit_size",
    "open_source",
    "probe",
    "read_frames",
    "webcam_spec",
]
