"""Pushed frames: JPEG / PNG / raw RGB bytes -> an RGB uint8 array, with the size checked before decoding."""

from __future__ import annotations

import io

import numpy as np

from ..errors import FrameError
from ..stream.frame import check_side

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


_PIXELS = " (livevlm serve --max-frame-pixels)"


class FrameTooLargeError(FrameError):
    """A pushed frame over the server's byte or pixel limit (HTTP 413)."""


def sniff_format(data: bytes) -> str | None:
    """'jpeg' or 'png' from the magic bytes, else None."""
    if data.startswith(_JPEG):
        return "jpeg"
    if data.startswith(_PNG):
        return "png"
    return None


def decode_frame(
    data: bytes,
    fmt: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    max_bytes: int,
    max_pixels: int,
) -> np.ndarray:
    """Decode one pushed frame. `fmt` None sniffs JPEG/PNG; 'rgb' needs `width` and `height`.

    Raises `FrameTooLargeError` over the limits (checked from the header, before decoding) and `FrameError`
    for anything that is not a decodable image of that format."""
    if len(data) > max_bytes:
        raise FrameTooLargeError(f"frame of {len(data)} bytes is over the limit of {max_bytes} bytes "
                                 "(livevlm serve --max-frame-bytes)")
    if not data:
        raise FrameError("empty frame")
    if fmt is not None and not isinstance(fmt, str):
        raise FrameError(f"format must be 'jpeg', 'png' or 'rgb', got {fmt!r}")
    fmt = (fmt or sniff_format(data) or "").lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt == "rgb":
        return _raw_rgb(data, width, height, max_pixels)
    if fmt not in ("jpeg", "png"):
        raise FrameError("frame is not JPEG or PNG (for raw RGB send format 'rgb' with width and height)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as image:
            w, h = image.size  # from the header: nothing decoded yet
            if w * h > max_pixels:
                raise FrameTooLargeError(f"frame of {w}x{h} pixels is over the limit of {max_pixels} pixels{_PIXELS}")
            rgb = np.asarray(image.convert("RGB"))
    except FrameTooLargeError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own size check runs in `open`, before ours
        raise FrameTooLargeError(f"frame is over the limit of {max_pixels} pixels{_PIXELS} ({e})") from None
    except UnidentifiedImageError:
        raise FrameError(f"frame is not a decodable {fmt.upper()} image (its header cannot be read)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise FrameError(f"frame is not a decodable {fmt.upper()} image: {e}") from None
    return check_side(np.ascontiguousarray(rgb, dtype=np.uint8))


def _raw_rgb(data: bytes, width: int | None, height: int | None, max_pixels: int) -> np.ndarray:
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise FrameError("a raw RGB frame needs positive integer width and height")
    if width * height > max_pixels:
        raise FrameTooLargeError(f"frame of {width}x{height} pixels is over the limit of {max_pixels} pixels{_PIXELS}")
    if len(data) != width * height * 3:
        raise FrameError(
            f"raw RGB frame of {width}x{height} needs {width * height * 3} bytes, got {len(data)}"
        )
    return check_side(np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy())


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    """An RGB uint8 frame as JPEG bytes (the page's view of a URL stream)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()
