"""Typed errors -> HTTP statuses and the JSON error body; anything untyped is a 500 without its traceback."""

from __future__ import annotations

import logging

from ..errors import (
    AnswerDeadlineError,
    ContextOverflowError,
    LivevlmError,
    NoVideoError,
    SessionClosedError,
    SourceConnectionError,
    SourceNotFoundError,
    SourceTimeoutError,
)
from .errors import ServeError
from .frames import FrameTooLargeError

log = logging.getLogger("livevlm.serve")

_STATUS: list[tuple[type[BaseException], int]] = [
    (ServeError, 0),  # its own status
    (FrameTooLargeError, 413),
    (SessionClosedError, 410),
    (NoVideoError, 409),  # a question before the stream's first frame: the stream's state, not the request
    (AnswerDeadlineError, 504),
    (SourceTimeoutError, 504),
    (SourceConnectionError, 502),
    (SourceNotFoundError, 404),
    (ContextOverflowError, 422),
    (LivevlmError, 422),
]


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception answers with."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return exc.status if isinstance(exc, ServeError) else status
    return 500


def error_body(exc: BaseException) -> tuple[int, dict]:
    """(status, {"error": {"status", "message"}}); untyped errors are logged and answered generically."""
    status = status_of(exc)
    if status == 500:
        log.error("internal error", exc_info=exc)
        message = "internal server error (the server log has the details)"
    else:
        message = str(exc) or type(exc).__name__
    return status, {"error": {"status": status, "message": message}}
