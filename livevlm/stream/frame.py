"""`Frame` and `FrameBatch`: decoded video as data (uint8 RGB, channels last) with presentation times.

Layout: `data` is always HWC (`Frame`) or NHWC (`FrameBatch`), RGB, uint8. `chw()` returns the channels-first
view and `from_chw()` accepts channels-first input, so both layouts are served without ambiguity.

Size: `fit_frame(data, max_pixels)` downscales an array above the input cap (`MAX_INPUT_PIXELS` by default)
by a block average, without any full-size copy; `fit_size` is the size the decoders scale to.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import FrameError
from . import config as _config

MAX_PTS_SECONDS = 1e9
"""Largest timestamp accepted (about 31 years): a bigger one is an epoch time or a unit mix-up."""
MIN_SIDE = 16
"""Smallest frame side a session (and the server's frame route) takes: a smaller 'frame' is a mistaken shape."""
_BLOCK_BYTES = 8 << 20  # working memory of one slab of fit_frame's block average
_HANDED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
"""Arrays livevlm made for a frame and handed on (`hand_over`), by id; an entry leaves with its array."""


def _check_pixels(data: object, ndim: int, what: str) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise FrameError(f"{what}.data must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8:
        hint = " (values in [0, 1]: (x * 255).round().clip(0, 255).astype(np.uint8))" if data.dtype.kind == "f" else ""
        raise FrameError(f"{what}.data must be uint8, got {data.dtype}{hint}")
    layout = "(H, W, 3)" if ndim == 3 else "(N, H, W, 3)"
    if data.ndim != ndim or data.shape[-1] != 3:
        raise FrameError(f"{what}.data must have shape {layout} RGB, got {tuple(data.shape)}{_layout_hint(data, ndim)}")
    if data.shape[-3] < 1 or data.shape[-2] < 1:
        raise FrameError(f"{what}.data has an empty side: {tuple(data.shape)}")
    return data


def _layout_hint(data: np.ndarray, ndim: int) -> str:
    """How to turn the usual wrong layouts (grayscale, RGBA, channels first) into RGB channels last."""
    if data.ndim == ndim - 1:
        return ": grayscale? np.repeat(x[..., None], 3, axis=-1) makes it RGB"
    if data.ndim == ndim and data.shape[-1] == 4:
        return ": RGBA? x[..., :3] drops the alpha channel"
    if data.ndim == ndim and data.shape[-3] == 3:
        return ": channels first? x.transpose(1, 2, 0) (Frame.from_chw) puts them last"
    return ""


@dataclass(frozen=True)
class Frame:
    """An RGB frame: `data` is uint8 of shape (H, W, 3); `pts_seconds` is its presentation time."""

    data: np.ndarray
    pts_seconds: float
    source_id: str = ""

    def __post_init__(self) -> None:
        _check_pixels(self.data, 3, "Frame")
        try:
            finite = bool(np.isfinite(self.pts_seconds))
        except TypeError:
            finite = False
        if not finite:
            raise FrameError(f"Frame.pts_seconds must be a finite number, got {self.pts_seconds!r}")

    @classmethod
    def from_chw(cls, data: np.ndarray, pts_seconds: float, source_id: str = "") -> Frame:
        """Build a frame from a channels-first uint8 (3, H, W) array."""
        if not isinstance(data, np.ndarray) or data.ndim != 3 or data.shape[0] != 3:
            raise FrameError(f"from_chw needs a (3, H, W) array, got {getattr(data, 'shape', type(data))}")
        return cls(np.ascontiguousarray(data.transpose(1, 2, 0)), pts_seconds, source_id)

    def chw(self) -> np.ndarray:
        """The pixels as a channels-first (3, H, W) view (no copy)."""
        return self.data.transpose(2, 0, 1)

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    def __repr__(self) -> str:
        src = f", source_id={self.source_id!r}" if self.source_id else ""
        return f"Frame(shape={tuple(self.data.shape)}, pts_seconds={self.pts_seconds:.3f}{src})"


@dataclass(frozen=True)
class FrameBatch:
    """N frames of one size: `data` uint8 (N, H, W, 3), `pts_seconds` float64 (N,), non-decreasing."""

    data: np.ndarray
    pts_seconds: np.ndarray
    source_id: str = ""

    def __post_init__(self) -> None:
        _check_pixels(self.data, 4, "FrameBatch")
        pts = np.asarray(self.pts_seconds, dtype=np.float64)
        if pts.shape != (self.data.shape[0],):
            raise FrameError(
                f"FrameBatch.pts_seconds must have shape ({self.data.shape[0]},), got {pts.shape}"
            )
        if not np.all(np.isfinite(pts)):
            raise FrameError("FrameBatch.pts_seconds must be finite")
        if np.any(np.diff(pts) < 0):
            raise FrameError("FrameBatch.pts_seconds must be non-decreasing")
        object.__setattr__(self, "pts_seconds", pts)

    @classmethod
    def from_frames(cls, frames: Sequence[Frame]) -> FrameBatch:
        """Stack frames of one size (in time order) into a batch."""
        if not frames:
            raise FrameError("FrameBatch.from_frames needs at least one frame")
        shapes = {f.data.shape for f in frames}
        if len(shapes) > 1:
            raise FrameError(f"FrameBatch frames must share one shape, got {sorted(shapes)}")
        data = np.stack([f.data for f in frames])
        return cls(data, np.array([f.pts_seconds for f in frames]), frames[0].source_id)

    def chw(self) -> np.ndarray:
        """The pixels as a channels-first (N, 3, H, W) view (no copy)."""
        return self.data.transpose(0, 3, 1, 2)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> Frame:
        return Frame(self.data[index], float(self.pts_seconds[index]), self.source_id)

    def __iter__(self) -> Iterator[Frame]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        span = f"{self.pts_seconds[0]:.3f}..{self.pts_seconds[-1]:.3f}" if len(self) else "empty"
        src = f", source_id={self.source_id!r}" if self.source_id else ""
        return f"FrameBatch(shape={tuple(self.data.shape)}, pts_seconds={span}{src})"


def fit_size(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """The (height, width) a decoder scales a frame to so it has at most `max_pixels`, aspect kept.

    Unchanged when it already fits (or `max_pixels` is None).
    """
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    h = max(1, min(height, int(height * scale)))
    w = max(1, min(width, int(width * scale), max_pixels // h))
    return h, w


def _block_factors(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """Integer (rows, columns) per output pixel so that (height // ky) * (width // kx) <= max_pixels."""
    k = math.ceil(math.sqrt(height * width / max_pixels))
    ky, kx = min(k, height), min(k, width)
    if ky == height:  # one output row left: the columns take the rest of the reduction
        kx = max(kx, math.ceil(width / max_pixels))
    if kx == width:
        ky = max(ky, math.ceil(height / max_pixels))
    return ky, kx


def fit_frame(data: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """`data` (uint8 RGB (H, W, 3)) itself when it has at most `max_pixels` pixels, else a downscaled copy.

    The copy averages blocks of the smallest integer factor that fits (area resampling; trailing rows or
    columns that do not fill a block are dropped), slab by slab: the extra memory is the output plus a few
    MB, never a full-size copy or float conversion. `max_pixels` None: `MAX_INPUT_PIXELS` (read at the call).
    A malformed array raises `FrameError`.
    """
    data = _check_pixels(data, 3, "Frame")
    cap = _config.MAX_INPUT_PIXELS if max_pixels is None else int(max_pixels)
    if cap < 1:
        raise FrameError(f"fit_frame: max_pixels must be >= 1, got {max_pixels!r}")
    height, width = data.shape[:2]
    if height * width <= cap:
        return data
    ky, kx = _block_factors(height, width, cap)
    oh, ow = height // ky, width // kx
    out = np.empty((oh, ow, 3), dtype=np.uint8)
    area = ky * kx
    acc_type = np.uint16 if area <= 256 else np.uint32  # 256 * 255 + 128 fits in 16 bits
    rows = max(1, _BLOCK_BYTES // (ow * 3 * np.dtype(acc_type).itemsize))  # output rows per slab
    for r in range(0, oh, rows):
        n = min(rows, oh - r)
        slab = data[r * ky : (r + n) * ky, : ow * kx].reshape(n, ky, ow, kx, 3)  # a view: no copy
        if area <= 64:  # the common case: one strided add per offset in the block is fastest
            sums = np.zeros((n, ow, 3), dtype=acc_type)
            for i in range(ky):
                for j in range(kx):
                    sums += slab[:, i, :, j, :]
        else:  # a frame over 64x the cap (or a thin strip): one reduction
            sums = slab.sum(axis=(1, 3), dtype=acc_type)
        sums += area // 2  # round to nearest
        sums //= area
        out[r : r + n] = sums
    return out


def check_side(data: np.ndarray) -> np.ndarray:
    """`data` if both sides of an (H, W, 3) array are at least `MIN_SIDE` pixels, else `FrameError` (the first
    frame sets a stream's size: a 1x1 one would shrink every frame after it)."""
    shape = getattr(data, "shape", ())
    if len(shape) == 3 and min(shape[:2]) < MIN_SIDE:
        raise FrameError(f"frame of {shape[1]}x{shape[0]} pixels is too small: each side must be >= {MIN_SIDE}")
    return data


def check_time(pts: object) -> float:
    """`pts` in seconds if it is a finite number in [0, `MAX_PTS_SECONDS`], else `FrameError` (a str, a bool, NaN,
    an epoch time); whether it follows the stream's last frame is the session's check (`guards.check_pts`)."""
    if isinstance(pts, bool) or not isinstance(pts, numbers.Real):
        raise FrameError(f"pts_seconds must be a number of seconds, got {type(pts).__name__} {pts!r}")
    value = float(pts)
    if not math.isfinite(value):
        raise FrameError(f"pts_seconds must be finite, got {value}")
    if not 0.0 <= value <= MAX_PTS_SECONDS:
        raise FrameError(
            f"pts_seconds must be seconds since the stream's start, in [0, {MAX_PTS_SECONDS:g}], got {value:g}"
            + (" (an epoch time? subtract the first frame's)" if value > MAX_PTS_SECONDS else "")
        )
    return value


def hand_over(data: np.ndarray) -> np.ndarray:
    """`data`, an array livevlm itself just made for a frame (a pushed frame's copy) and holds nowhere else,
    marked so that the first `accept_pixels` of it takes it as it is: no caller can refill it, so a second copy
    would only cost time."""
    _HANDED[id(data)] = data
    return data


def accept_pixels(data: object) -> np.ndarray:
    """What a session keeps of a pushed frame: checked (`FrameError`, with a hint for the usual mistakes),
    sides >= `MIN_SIDE`, fitted to `MAX_INPUT_PIXELS`, and never the caller's own array (a loop that refills one
    camera buffer must not rewrite frames still waiting to be encoded). An array `hand_over` marked (a
    `PushSource`'s copy) is taken once without another copy."""
    pixels = check_side(_check_pixels(data, 3, "Frame"))
    fitted = fit_frame(pixels)
    if fitted is not pixels or _HANDED.pop(id(pixels), None) is pixels:
        return fitted
    return np.array(fitted)


def resize_frame(data: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 frame resized (antialiased bilinear) to `size` (height, width): a camera that changed
    resolution mid-stream, fitted to the stream's first frame size."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
