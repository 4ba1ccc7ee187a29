"""Video sources and the `Frame` dataclass they yield."""

from .file import FileSource, FileSourceConfig, SourceStats, VideoInfo, probe, read_frames
from .frame import Frame

__all__ = ["FileSource", "FileSourceConfig", "Frame", "SourceStats", "VideoInfo", "probe", "read_frames"]
