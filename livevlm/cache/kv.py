"""The uncompressed KV context of a stream: one transformers `Cache`, grown chunk by chunk.

Question tokens are appended after the stream's tokens and cut off again once the answer is done, so the
stream context is the same before and after every question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class KVStats:
    """Size of the cached context."""

    tokens: int = 0
    bytes: int = 0


class StreamKV:
    """Holds the LLM cache of one stream and the length of the part that belongs to the stream."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.stream_tokens = 0

    @property
    def tokens(self) -> int:
        return int(self.cache.get_seq_length())

    def commit(self) -> None:
        """Everything now in the cache belongs to the stream."""
        self.stream_tokens = self.tokens

    def rollback(self) -> None:
        """Drop whatever was appended since the last `commit` (a question and its answer)."""
        extra = self.tokens - self.stream_tokens
        if extra > 0:
            self.cache.crop(-extra)  # transformers 5.x: a negative count of tokens to remove

    def nbytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "nbytes"):
                    total += int(t.nbytes)
        return total

    def stats(self) -> KVStats:
        return KVStats(tokens=self.tokens, bytes=self.nbytes())
