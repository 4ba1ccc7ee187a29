"""Will a stream fit the model's context? An estimate made before ingesting, so that `kv="full"` over a file
too long for the model fails at once, naming the remedy, instead of after decoding the whole file.

    frames ─► chunks (frames_per_chunk each) ─► tokens per chunk at the stream's size ─► the pruner's budget
        ─► + the context so far + the question + max_new_tokens  vs  the model's max_context
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .errors import ContextOverflowError

logger = logging.getLogger(__name__)


def expected_frames(duration: float | None, fps: float, max_frames: int | None) -> int | None:
    """How many frames sampling `duration` seconds at `fps` gives (a video slower than `fps` has its frames
    held on the instants between them, as a player shows them: still one per 1/fps)."""
    if duration is None:
        return max_frames
    n = max(1, math.ceil(duration * fps - 1e-9))
    return min(n, max_frames) if max_frames else n


def check_stream_fits(
    adapter: Any,
    pruner: Any,
    *,
    used: int,
    pending: int,
    num_frames: int,
    size: tuple[int, int],
    question: str,
    max_new_tokens: int,
) -> None:
    """Raise `ContextOverflowError` if `num_frames` more frames (after `pending` ones, over `used` context
    tokens) cannot be answered with `question` and `max_new_tokens` within `adapter.max_context`.

    Nothing is refused when the pruner's kept count depends on the content (it may keep fewer)."""
    fpc = adapter.frames_per_chunk
    per_chunk = adapter.tokens_per_chunk(size)
    kept = pruner.planned_tokens(per_chunk, math.ceil((pending + num_frames) / fpc))
    if kept is None:
        return
    asked = len(adapter.suffix_ids(question))
    room = adapter.max_context - used - asked - max_new_tokens
    if sum(kept) <= room:
        return
    total, fit = 0, 0
    for k in kept:
        if total + k > room:
            break
        total, fit = total + k, fit + 1
    frames = fit * fpc - pending
    need = (
        f"{num_frames} frames of {size[1]}x{size[0]} need {sum(kept)} visual tokens ({per_chunk} per {fpc} frames"
        f"{', as pruned' if sum(kept) < per_chunk * len(kept) else ''}), but the model's context of "
        f"{adapter.max_context} leaves {max(room, 0)} after {used} tokens already in it, {asked} of question and "
        f"{max_new_tokens} of answer"
    )
    if frames < 1:
        raise ContextOverflowError(f"{need}: shorten the question or lower --max-new-tokens")
    raise ContextOverflowError(
        f"{need}: use --kv bilevel (each question reads a bounded part of the stream) or --max-frames {frames} "
        "(the most that fit; SessionConfig(kv=..., max_frames=...) in Python)"
    )


def check_answer_budget(adapter: Any, prompt_tokens: int, max_new_tokens: int) -> None:
    """`ConfigError` (at construction, not after a stream was ingested) if `max_new_tokens` alone leaves no room in
    the model's context after the system prompt for a question and a frame."""
    from .errors import ConfigError

    room = adapter.max_context - prompt_tokens
    if max_new_tokens >= room:
        raise ConfigError(
            f"max_new_tokens {max_new_tokens} does not fit the model's context of {adapter.max_context} tokens "
            f"({prompt_tokens} of them the system prompt): use --max-new-tokens below {room} (much lower leaves room "
            "for the video)"
        )


def say_when_past_context(before: int, after: int, max_context: int, policy: str) -> None:
    """Log once, as a `kv="full"` stream (the default, which grows with the stream) grows from `before` to
    `after` tokens past the model's context: from there a question over all of it is refused."""
    if policy == "full" and before <= max_context < after:
        logger.warning(
            "the stream's context (%d tokens) is now longer than the model's (%d): a question over all of it "
            "will be refused; ask within= a range, or use a bounded kv policy (sink_window, retrieval, bilevel) "
            "for an endless stream", after, max_context,
        )
