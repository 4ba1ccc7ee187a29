"""`UrlSource`: RTSP, HTTP(S), RTMP, UDP, SRT or any other stream FFmpeg opens by URL."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import SourceConnectionError
from .config import UrlSourceConfig
from .live import AVLiveSource, OpenSpec

_RTSP_SCHEMES = ("rtsp", "rtsps")


_SECRET_PARAMS = re.compile(r"([?&;](?:password|passwd|pass|pwd|token|access_token|auth|key|secret|sig|signature)=)"
                            r"[^&;#]*", re.IGNORECASE)  # fmt: skip
"""Query parameters that carry credentials (many IP cameras take ?user=admin&password=...)."""


def redact(url: str) -> str:
    """`url` with the password of its user info and the values of credential query parameters (password=,
    token=, ...) replaced by '***' (rtsp://admin:***@cam/...): what errors, stats and frames name the source by,
    so a camera's credentials never reach a log or a status page."""
    url = _SECRET_PARAMS.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed netloc (e.g. a bad port): hide everything before '@'
        head, at, _ = url.partition("://")[2].rpartition("@")
        return url if not at else url.replace(head + at, "***@", 1)
    if not password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def url_spec(config: UrlSourceConfig) -> OpenSpec:
    """The `av.open` arguments for `config` (transport applies to RTSP URLs only)."""
    options = dict(config.options)
    if config.scheme in _RTSP_SCHEMES and config.transport is not None:
        options.setdefault("rtsp_transport", config.transport)
    scheme, sep, rest = config.url.partition("://")  # schemes are case-insensitive; FFmpeg's protocol names are not
    return OpenSpec(scheme.lower() + sep + rest if sep else config.url, config.format, options)


class UrlSource(AVLiveSource):
    """Sampled frames from a stream URL; live URLs reconnect with backoff when the connection drops.

    The first connection is made in the constructor: a refused, silent or unknown URL raises a typed
    `SourceError` at once (`SourceConnectionError`, `SourceTimeoutError`, ...). A URL to a file is read as fast
    as the network allows unless `config.realtime`; a live stream arrives in real time whatever it says.
    """

    _open_error = SourceConnectionError
    _network = True

    def __init__(self, config: UrlSourceConfig) -> None:
        self.config = config
        super().__init__(
            url_spec(config),
            source_id=redact(config.url),
            fps=config.fps,
            live=config.is_live,
            open_timeout=config.open_timeout,
            read_timeout=config.read_timeout,
            reconnect=config.reconnect,
            max_frames=config.max_frames,
            realtime=config.realtime and not config.is_live,  # a live stream is paced by its sender
            max_input_pixels=config.max_input_pixels,
            hold=True,  # a URL to a file is held over instants no frame reaches, as a local file is
        )
        self.live = config.is_live or config.realtime  # paced, a URL to a file stands in for a camera

    def shortfall(self) -> str | None:
        """As `AVLiveSource.shortfall`, and a stream of no declared length that ended: perhaps a live stream (an
        HTTP camera) its server closed, not read again unless `live`."""
        base = super().shortfall()
        if not (self._exhausted and not self._declares_end and self.reconnect is None):
            return base
        ended = ("the stream ended, and it declares no length: if it is a live stream its server closed, "
                 "UrlSourceConfig(live=True) (livevlm watch --live) reconnects when it ends")  # fmt: skip
        return ended if base is None else f"{base}; {ended}"

    def _hides_secret(self) -> bool:
        return self.source_id != self.config.url

    def _why(self, error: Exception) -> str:
        """FFmpeg's error text names the URL it was given: name it by `source_id`, without its password."""
        return str(error).replace(self.spec.file, self.source_id)
