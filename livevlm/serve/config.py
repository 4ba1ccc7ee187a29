"""`ServeConfig`: what `livevlm serve` loads, where it listens, and the limits it enforces."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..session_config import SessionConfig

DEFAULT_SCHEMES = ("rtsp", "rtsps", "http", "https", "lavfi")


@dataclass
class ServeLimits:
    """Bounds on what one client can make the server hold or do."""

    max_streams: int = 4
    """Streams open at once (each holds a session: its KV context and buffers)."""
    max_frame_bytes: int = 4 * 1024 * 1024
    """Largest pushed frame (encoded JPEG/PNG or raw RGB bytes)."""
    max_frame_pixels: int = 3840 * 2160
    """Largest pushed frame in pixels (width x height); larger ones are refused before decoding."""
    max_body_bytes: int = 64 * 1024
    """Largest JSON request body (a chat request carries its whole history: raise this for long chats)."""
    max_question_chars: int = 2000
    """Longest question (a chat's last user message)."""
    max_new_tokens: int = 512
    """Most tokens a client may ask for in one answer (max_tokens)."""
    questions_per_minute: int = 60
    """Questions per API key (per client address without a key) in any 60 s; 0 = no limit."""
    idle_timeout_s: float = 600.0
    """A stream that gets no frame and no request for this long is closed; 0 = never."""
    buffer_frames: int = 8
    """Frames a stream buffers before dropping the oldest (when the model falls behind)."""

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_frame_bytes", "max_frame_pixels", "max_body_bytes",
                     "max_question_chars", "max_new_tokens", "buffer_frames"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.questions_per_minute < 0:
            raise ConfigError(f"questions_per_minute must be >= 0, got {self.questions_per_minute}")
        if not self.idle_timeout_s >= 0:
            raise ConfigError(f"idle_timeout_s must be >= 0, got {self.idle_timeout_s}")

    def check_question(self, question: str, max_tokens: int | None) -> None:
        """Refuse an over-long question or token budget (HTTP 422) before any model work."""
        from .errors import InvalidRequestError

        if len(question) > self.max_question_chars:
            raise InvalidRequestError(
                f"question of {len(question)} characters is over the limit of {self.max_question_chars} "
                "(livevlm serve --max-question-chars)"
            )
        if max_tokens is not None and max_tokens > self.max_new_tokens:
            raise InvalidRequestError(f"max_tokens {max_tokens} is over the server's limit of {self.max_new_tokens} "
                                      "(livevlm serve --max-tokens-limit)")  # fmt: skip


@dataclass
class ServeConfig:
    """The server: one model (shared by every stream), its session settings, security and limits."""

    session: SessionConfig = field(default_factory=SessionConfig)
    """Model, sampling and compression for every stream (SessionConfig.model None = the bundled model)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    """Bearer token every route requires; None = no auth (refused on a non-loopback host)."""
    media_dir: str | None = None
    """Directory local video files may be streamed from (None: no local files)."""
    allowed_schemes: tuple[str, ...] = DEFAULT_SCHEMES
    """URL schemes a stream may be created from ('lavfi' = ffmpeg test sources); 'push' is always allowed."""
    limits: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self) -> None:
        origin = "given"
        if self.api_key is None:
            self.api_key, origin = os.environ.get("LIVEVLM_API_KEY") or None, "in LIVEVLM_API_KEY"
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError(f"the API key must be at least 8 characters; the one {origin} has {len(self.api_key)}")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            raise ConfigError(f"the API key {origin} must be printable ASCII (HTTP headers carry no other text)")
        if not is_loopback(self.host) and self.api_key is None:
            raise ConfigError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it could watch your "
                "streams. Give --api-key (or LIVEVLM_API_KEY), or bind 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.media_dir is not None:
            media = Path(self.media_dir).expanduser()
            if not media.is_dir():
                raise ConfigError(f"--media-dir {self.media_dir} is not a directory")
            self.media_dir = str(media.resolve())
        unknown = set(self.allowed_schemes) - set(DEFAULT_SCHEMES)
        if unknown:
            raise ConfigError(f"unknown URL schemes {sorted(unknown)}; allowed: {', '.join(DEFAULT_SCHEMES)}")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
