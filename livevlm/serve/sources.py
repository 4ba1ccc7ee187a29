"""Which sources a client may open: allow-listed URL schemes, safe lavfi graphs, files only under --media-dir.

    "push"                      frames sent by the client (WebSocket or POST)
    rtsp:// rtsps:// http(s)://  when the scheme is in ServeConfig.allowed_schemes
    lavfi:GRAPH                 ffmpeg test sources, only generator/simple filters (no movie=, file options)
    clip.mp4, sub/clip.mp4      a file under --media-dir (absolute paths and file:// only if they resolve inside)
Anything else (webcam:N, other schemes, ../ escapes, symlinks out of the media dir) raises SourceNotAllowedError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import SourceNotFoundError
from .errors import InvalidRequestError, SourceNotAllowedError

# ffmpeg filters a lavfi graph may use: generators and pixel-only filters; none reads or writes files.
LAVFI_FILTERS = frozenset(
    [
        "testsrc",
        "testsrc2",
        "smptebars",
        "smptehdbars",
        "rgbtestsrc",
        "yuvtestsrc",
        "pal75bars",
        "pal100bars",
        "color",
        "mandelbrot",
        "life",
        "cellauto",
        "gradients",
        "sierpinski",
        "zoneplate",
        "allrgb",
        "allyuv",
        "nullsrc",
        "scale",
        "format",
        "fps",
        "hue",
        "rotate",
        "noise",
        "drawbox",
        "negate",
        "hflip",
        "vflip",
        "trim",
        "setpts",
        "eq",
        "boxblur",
        "crop",
        "pad",
        "transpose",
        "null",
    ]
)


@dataclass(frozen=True)
class ResolvedSource:
    """What a stream is created from: `spec` is what `livevlm.stream.open_source` gets."""

    kind: str  # push | url | lavfi | file
    spec: str


def resolve_source(source: str, allowed_schemes: tuple[str, ...], media_dir: str | None) -> ResolvedSource:
    """Check `source` against the server's policy; returns what to open."""
    if not isinstance(source, str) or not source.strip():  # a mistake, not a source the policy refuses: 422
        raise InvalidRequestError("source must be 'push', a URL, 'lavfi:GRAPH' or a file under --media-dir")
    source = source.strip()
    if source == "push":
        return ResolvedSource("push", "push")
    if source.startswith("lavfi:"):
        _check_scheme("lavfi", allowed_schemes)
        return ResolvedSource("lavfi", _check_lavfi(source))
    if "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme == "file":
            return _media_file(unquote(urlparse(source).path), media_dir)
        _check_scheme(scheme, allowed_schemes)
        return ResolvedSource("url", source)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(?![\\/])", source):  # webcam:0, v4l2:..., any other scheme
        raise SourceNotAllowedError(
            f"source {source.split(':', 1)[0]}: is not allowed here; use 'push', a URL "
            f"({', '.join(s for s in allowed_schemes if s != 'lavfi')}), 'lavfi:GRAPH' or a file under --media-dir"
        )
    return _media_file(source, media_dir)


def _check_scheme(scheme: str, allowed: tuple[str, ...]) -> None:
    if scheme not in allowed:
        raise SourceNotAllowedError(
            f"URL scheme {scheme!r} is not allowed; allowed: {', '.join(allowed) or 'none'}"
        )


def _check_lavfi(source: str) -> str:
    graph = source[len("lavfi:") :]
    names = [part.split("=", 1)[0].strip() for part in re.split(r"[,;]", re.sub(r"\[[^\]]*\]", "", graph))]
    bad = sorted({n for n in names if n and n not in LAVFI_FILTERS})
    if bad or not any(names):
        raise SourceNotAllowedError(
            f"lavfi filters {bad or ['(none)']} are not allowed; allowed: {', '.join(sorted(LAVFI_FILTERS))}"
        )
    return source


def _media_file(path: str, media_dir: str | None) -> ResolvedSource:
    if media_dir is None:
        raise SourceNotAllowedError("local files are not served: start the server with --media-dir DIR")
    root = Path(media_dir)
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise SourceNotAllowedError(f"{path!r} is outside the media directory")
    if not full.is_file():
        raise SourceNotFoundError(f"no file {path!r} in the media directory")
    return ResolvedSource("file", str(full))
