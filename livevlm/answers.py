"""What a question hands back: `AnswerStream` (the text pieces of `Session.ask`, with what the answer read and
why it ended) and `ChoiceAnswer` (`Session.choose`: the best choice with every choice's probability)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChoiceAnswer:
    """The best of the given choices, with every choice's probability (softmax of their log-likelihoods)."""

    choice: str
    probabilities: dict[str, float]
    log_likelihoods: dict[str, float]
    pts_seconds: float | None
    """Stream time of the last frame the answer saw."""
    chunks: int
    """Chunks ingested when the question was asked (what the answer saw, a pending odd frame aside)."""
    first_pts_seconds: float | None = None
    """Stream time of the stream's first frame."""
    pending_frames: int = 0
    """Frames not yet a chunk (a half-filled temporal patch) that the answer read too, in its own prefill."""

    @property
    def pts_range(self) -> tuple[float | None, float | None]:
        """(first, last) stream time of the frames the answer was asked over."""
        return (self.first_pts_seconds, self.pts_seconds)


class AnswerStream(Iterator[str]):
    """The text pieces of one answer, with what it was asked over; `close()` stops decoding early."""

    def __init__(
        self,
        pieces: Iterator[str],
        pts_range: tuple[float | None, float | None],
        chunks: int,
        plan: Any,
        pending_frames: int = 0,
    ) -> None:
        self._pieces = pieces
        self.pts_range = pts_range
        """(first, last) stream time of the frames the answer reads: those ingested when it was asked, or with
        `within=` those of the chunks in the range."""
        self.chunks = chunks
        """Chunks the answer reads: every chunk ingested when it was asked, or with `within=` the range's."""
        self.pending_frames = pending_frames
        """Frames not yet a chunk (a half-filled temporal patch) the answer reads too, in its own prefill."""
        self._plan = plan
        self._closed = False

    def __next__(self) -> str:
        return next(self._pieces)

    @property
    def tokens(self) -> int:
        """Tokens decoded so far."""
        return self._plan.produced if self._plan is not None else 0

    @property
    def finish_reason(self) -> str:
        """Why the answer ended: "stop" (end token, loop or a choice), "length" (max_new_tokens), "deadline"
        (deadline_s) or "closed" (`close()` before any of those); "running" while tokens may still come."""
        plan = self._plan
        if plan is None or plan.stop.done or (plan.constraint is not None and plan.constraint.done()):
            return "stop"  # (a regex / schema that is complete ends the answer like an end token)
        if plan.cut_by_deadline:
            return "deadline"
        if plan.produced >= plan.budget:
            return "length"
        return "closed" if self._closed else "running"

    def close(self) -> None:
        """Stop decoding (the session's counters still record what was decoded)."""
        self._closed = True
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
