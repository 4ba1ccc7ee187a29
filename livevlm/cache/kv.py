"""The uncompressed KV context of a stream: one transformers `Cache`, grown chunk by chunk.

A question is answered on a `snapshot()`: a cache that shares the stream's key/value tensors (transformers'
`DynamicLayer.update` concatenates into new tensors, never writes in place), so the answer's tokens never
reach the stream context and ingestion can go on while a question is answered.
"""

from __future__ import annotations

import copy
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

    def snapshot(self) -> Any:
        """A cache holding the stream's KV as of now; appending to it leaves the stream untouched."""
        snap = copy.copy(self.cache)
        snap.layers = [copy.copy(layer) for layer in self.cache.layers]
        return snap

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
