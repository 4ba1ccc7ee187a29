"""Input checks of the session's public methods: questions, timestamps, the stream's time across segments.

Every refusal is a typed `LivevlmError` with the reason and the fix; nothing here touches the model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from .errors import FrameError, QuestionError
from .stream import Frame
from .stream.frame import check_time


def check_question(question: object) -> str:
    """The question if it is non-empty UTF-8 text, else `QuestionError` saying what is wrong."""
    if isinstance(question, (bytes, bytearray)):
        raise QuestionError(
            "the question must be text (str), got bytes: decode it first, e.g. q.decode('utf-8')"
        )
    if not isinstance(question, str):
        raise QuestionError(f"the question must be a non-empty string, got {type(question).__name__}")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes from argv or a lenient decode
        raise QuestionError(
            f"the question is not valid UTF-8 text (undecodable bytes at character {e.start}); "
            "check the terminal's or the file's encoding"
        ) from None
    if not question.strip():
        raise QuestionError("the question must be a non-empty string, got an empty or blank one")
    return question


def check_choices(choices: object) -> list[str]:
    """`choices` as a list of strings if there are at least two, distinct and non-empty; else `QuestionError`."""
    if isinstance(choices, (str, bytes)):
        raise QuestionError(f"choices must be a list of strings, got one string {choices!r}")
    options = list(choices or ())  # type: ignore[call-overload]
    wrong = [c for c in options if not isinstance(c, str)]
    if wrong:
        raise QuestionError(f"choices must be strings, got {type(wrong[0]).__name__} {wrong[0]!r} among {options!r}")
    if len(options) < 2 or len(set(options)) != len(options) or not all(c.strip() for c in options):
        raise QuestionError(f"choices must be at least two distinct non-empty strings, got {options!r}")
    return options


def check_max_new_tokens(max_new_tokens: object, default: int) -> int:
    """The answer's token budget: `default` for None, else a positive integer (`QuestionError` otherwise)."""
    if max_new_tokens is None:
        return default
    if not isinstance(max_new_tokens, numbers.Integral) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise QuestionError(f"max_new_tokens must be a positive integer or None, got {max_new_tokens!r}")
    return int(max_new_tokens)


def check_within(within: object) -> tuple[float, float] | None:
    """`within` as (start, end) stream seconds if it is None or two finite numbers with start <= end; else
    `QuestionError`."""
    if within is None:
        return None
    pair = tuple(within) if isinstance(within, (tuple, list)) or getattr(within, "shape", None) == (2,) else ()  # numpy too
    if len(pair) != 2 or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) for t in pair):
        raise QuestionError(f"within must be (start, end) in stream seconds, got {within!r}")
    start, end = float(pair[0]), float(pair[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        raise QuestionError(f"within must be finite seconds with start <= end, got ({start:g}, {end:g})")
    return start, end


def check_frames(source: object) -> Iterable[Any]:
    """What `ingest` reads when it is not a path: an iterable of frames, else `FrameError`."""
    if not isinstance(source, Iterable):
        raise FrameError(f"ingest takes a video path or an iterable of frames, got {type(source).__name__}")
    return source


def check_pts(pts: object, last: float | None) -> float:
    """`pts` in seconds if it is a finite number in [0, 1e9] after `last`; else `FrameError`."""
    value = check_time(pts)
    if last is not None and value <= last:
        raise FrameError(
            f"pts_seconds must be after the previous frame's ({last:g} s), got {value:g}: "
            "timestamps of one stream increase (ingest() / watch() shift a source that restarts)"
        )
    return value


def segment_offset(first_pts: float, last_pts: float | None, fps: float) -> float:
    """Shift for a segment (one ingest() or watch()) whose first frame is at `first_pts`, so that it follows
    the stream: 0 when it already starts after the last frame (however closely: a robot's batches at 30 Hz keep
    their clock), else what moves it one period after it (a second file, a source restarting at 0)."""
    if last_pts is None or first_pts > last_pts:
        return 0.0
    return last_pts + 1.0 / fps - first_pts


class SegmentPush:
    """Pushes one source's frames (one `ingest()` or `watch()`) with their times shifted, once, at its first
    frame, by `segment_offset`: a second file or a source restarting at 0 follows the stream instead of being
    refused frame by frame. Arrays without a time are pushed as they are."""

    def __init__(self, push: Callable[..., Any], last_pts: Callable[[], float | None], fps: float) -> None:
        self._push, self._last_pts, self._fps = push, last_pts, fps
        self.offset: float | None = None

    def __call__(self, frame: Any) -> Any:
        if not isinstance(frame, Frame):
            return self._push(frame)
        if self.offset is None:
            self.offset = segment_offset(frame.pts_seconds, self._last_pts(), self._fps)
        return self._push(frame, frame.pts_seconds + self.offset)
