"""livevlm: a streaming runtime for video language models.

from livevlm import Session, summarize
session = Session("path/or/hub-id")        # None: the bundled default model
session.ingest("clip.mp4")                 # or session.push(frame_array) from your own loop
print("".join(session.ask("What happened?")))
summarize("long.mp4", out="long.md")     # chapters and a summary, in one bounded pass
"""

from .errors import (
    AnswerDeadlineError,
    AnswerIncompleteError,
    ConfigError,
    ContextOverflowError,
    DeviceNotFoundError,
    DeviceUnavailableError,
    EmptyVideoError,
    FrameError,
    LivevlmError,
    ModelLoadError,
    NotAVideoError,
    NoVideoError,
    OutputError,
    QuestionError,
    ResumeError,
    SessionClosedError,
    SnapshotError,
    SourceConnectionError,
    SourceDisconnectedError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
    UnboundedSourceError,
)
from .models import load_model
from .session import Session, SessionConfig, SessionStats
from .standing import StandingEvent, StandingQuery
from .stream import FileSource, FileSourceConfig, Frame, PushSource, open_source
from .summary import SummarizeOptions, Summary, summarize

__version__ = "0.1.0"

__all__ = [
    "AnswerDeadlineError",
    "AnswerIncompleteError",
    "ConfigError",
    "ContextOverflowError",
    "DeviceNotFoundError",
    "DeviceUnavailableError",
    "EmptyVideoError",
    "FileSource",
    "FileSourceConfig",
    "Frame",
    "FrameError",
    "LivevlmError",
    "ModelLoadError",
    "NoVideoError",
    "NotAVideoError",
    "OutputError",
    "PushSource",
    "QuestionError",
    "ResumeError",
    "Session",
    "SessionClosedError",
    "SessionConfig",
    "SessionStats",
    "SnapshotError",
    "SourceConnectionError",
    "SourceDisconnectedError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTimeoutError",
    "StandingEvent",
    "StandingQuery",
    "SummarizeOptions",
    "Summary",
    "UnboundedSourceError",
    "__version__",
    "load_model",
    "open_source",
    "summarize",
]
