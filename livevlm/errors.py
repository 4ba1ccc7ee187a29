"""Typed errors: every user mistake surfaces as a subclass of `LivevlmError`, never a deep torch traceback."""

from __future__ import annotations


class LivevlmError(Exception):
    """Base class of every error livevlm raises on purpose."""


class ConfigError(LivevlmError, ValueError):
    """A configuration that cannot work, refused at construction."""


class SourceError(LivevlmError):
    """A video source could not be opened or read (missing file, not a video, bad URL)."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file or device named by a source does not exist."""


class NotAVideoError(SourceError):
    """The input exists but holds no decodable video stream."""


class EmptyVideoError(SourceError):
    """The video decoded to zero usable frames."""


class FrameError(LivevlmError, ValueError):
    """A frame array has the wrong shape, dtype or timestamp."""


class ModelLoadError(LivevlmError):
    """A model path or hub id could not be loaded, or its architecture is not supported."""


class DeviceUnavailableError(LivevlmError):
    """The requested torch device (cuda, cuda:1, mps, ...) is not available on this machine."""


class ContextOverflowError(LivevlmError):
    """The stream plus the question do not fit the model's context window."""


class QuestionError(LivevlmError, ValueError):
    """A question that cannot be asked (empty, not a string)."""


class NoVideoError(QuestionError):
    """A question over the video asked before any frame was ingested (no chunk, no pending frame), or of a
    watched source that ended, failed or sent nothing in time before its first frame. `reason`: that source's
    own error, if it failed (also the exception's cause). A text-only question: `ask(..., needs_video=False)`."""

    def __init__(self, message: str, reason: BaseException | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class DeviceNotFoundError(SourceNotFoundError):
    """A camera index or name that no capture device answers to."""


class SourceTimeoutError(SourceError, TimeoutError):
    """Opening or reading a source did not finish within its timeout."""


class SourceConnectionError(SourceError, ConnectionError):
    """A stream URL could not be connected to (refused, unreachable, bad response)."""


class SourceDisconnectedError(SourceError):
    """A live source was lost and every reconnect attempt allowed by its config failed."""


class SessionClosedError(LivevlmError):
    """A session, or a store it owns, was used after `close()`."""


class UnboundedSourceError(SourceError, ConfigError):
    """A source that never ends (a camera, a live stream, a lavfi graph) where one that ends is needed:
    `livevlm ask` reads its source to the end before answering (give it --max-frames, or use `livevlm watch`)."""


class AnswerDeadlineError(LivevlmError, TimeoutError):
    """An answer's deadline passed before it had anything to give (no token decoded, choices not all scored)."""


class AnswerIncompleteError(LivevlmError):
    """A constrained answer (regex / JSON schema) ran out of tokens before its text was complete."""


class SnapshotError(LivevlmError):
    """A session snapshot that cannot be written or read back: missing, corrupt or truncated, of another
    format version, or taken with another model (weights, dtype) than the one it is restored onto."""


class OutputError(LivevlmError, OSError):
    """An output file (or the resume state beside it) cannot be written: no such folder, not a folder, denied."""


class ResumeError(LivevlmError):
    """Resume state that does not belong to this run (another video, other settings or model), or a run's
    state found where a new run would overwrite it without `--resume`."""
