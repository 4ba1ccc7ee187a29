"""Typed errors of the service, each with the HTTP status it maps to."""

from __future__ import annotations

from ..errors import LivevlmError


class ServeError(LivevlmError):
    """A request the server refuses; `status` is the HTTP status code it answers with."""

    status = 400


class StreamNotFoundError(ServeError):
    status = 404


class TooManyStreamsError(ServeError):
    status = 429


class SourceNotAllowedError(ServeError):
    """A source outside what the server allows: a scheme not allow-listed, a path outside --media-dir."""

    status = 403


class RateLimitedError(ServeError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAPushStreamError(ServeError):
    status = 409


class PayloadTooLargeError(ServeError):
    status = 413


class InvalidRequestError(ServeError):
    status = 422


class ConflictError(ServeError):
    status = 409
