"""Records every stage shares: a chunk of visual tokens, where it sits, and the KV layout values.

Stages import these from here (never from each other), so stream/, models/, prune/ and cache/ stay layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ChunkText:
    """Text a model's prompt puts around one chunk's visual tokens (a timestamp, image delimiters), embedded and
    placed by the adapter: prefilled with the chunk, never pruned."""

    before: torch.Tensor  # (B, D) embeds
    before_positions: torch.Tensor  # (P, B) long, P = rows of the family's position ids
    after: torch.Tensor  # (A, D)
    after_positions: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.before.shape[0] + self.after.shape[0])


@dataclass
class VisualChunk:
    """Visual tokens of one temporal patch (`frames_per_chunk` frames) with their 3D (t, h, w) positions."""

    embeds: torch.Tensor  # (N, D) in the LLM's embedding space; (N, D * (1 + k)) where a family packs k per-layer
    # features per token (Qwen3-VL DeepStack) as extra columns, so pruners keep and merge them with the same index
    positions: torch.Tensor  # (3, N) long: M-RoPE (t, h, w) ids, absolute in the stream; (1, N) for 1-D families
    grid_thw: tuple[int, int, int]  # LLM-side grid (t=1, h, w) after spatial merge
    pts_seconds: tuple[float, ...]  # timestamps of the frames it covers
    encode_seconds: float = 0.0
    changed: torch.Tensor | None = None  # (N,) bool from the feature cache: token recomputed (None: all new)
    kept_index: torch.Tensor | None = None  # (N_kept,) long, set by a pruner: rows kept of the full chunk
    text: ChunkText | None = None  # the prompt's text around the visual tokens, for families that have it
    attention: tuple[torch.Tensor, ...] | None = None  # per requested ViT layer: (N,) attention received
    known_last: int | None = None  # `last_position` as the session built it on the host (None: read the positions)

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def last_position(self) -> int:
        """The highest position the chunk occupies, text included (on a GPU, reading the positions waits for it:
        the session's chunks carry it from the host)."""
        if self.known_last is not None:
            return self.known_last
        last = int(self.positions.max()) if self.positions.numel() else -1
        if self.text is not None and self.text.after.shape[0]:
            last = max(last, int(self.text.after_positions.max()))
        return last

    def with_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds, positions) to prefill: the text before, the (kept) visual tokens, the text after."""
        t = self.text
        if t is None:
            return self.embeds, self.positions
        pad = self.embeds.shape[1] - t.before.shape[1]  # zero columns where a family packs per-layer features
        before, after = (torch.nn.functional.pad(x.to(self.embeds.dtype), (0, pad)) for x in (t.before, t.after))
        embeds = torch.cat([before, self.embeds, after])
        positions = torch.cat([t.before_positions, self.positions.to(t.before_positions.device), t.after_positions], 1)
        return embeds, positions


@dataclass(frozen=True)
class ChunkPlace:
    """Where a chunk sits: its index in the stream, the video's start position, seconds per chunk."""

    index: int
    offset: int
    seconds_per_chunk: float
    start: int = -1
    """The first free position after everything placed before (prompt, earlier chunks and their text): where
    families whose positions count tokens (1-D, timestamped M-RoPE) put the chunk; -1 where not known."""


@dataclass(frozen=True)
class KVLayout:
    """Shape and placement of a language model's KV: what a store needs to hold it, as plain values."""

    layers: int
    kv_heads: int
    head_dim: int
    device: torch.device
    dtype: torch.dtype
    query_heads: int = 0
    """Attention (query) heads per layer; 0: as many as kv_heads."""

    @property
    def shape3(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim)."""
        return (self.layers, self.kv_heads, self.head_dim)


@dataclass(frozen=True)
class VisionEncoder:
    """A model's vision tower as a ViT feature cache sees it: the full encode and, if the family has one,
    a block runner for partial recompute. Given to the cache at construction; the cache calls nothing else."""

    full: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]
    """(patches, grid) -> (M, D) merged features: the model's own encode."""
    runner: Callable[[], Any] | None = None
    """Returns the (shared, stateless) block runner; None when the family has none."""
    family: str = ""
    attention: Callable[[torch.Tensor, tuple[int, int, int], tuple[float, ...]], Any] | None = None
    """(patches, grid, layers as fractions of the depth) -> (the `full` features, per layer (M,) attention
    each merged token receives there); None when the family cannot report it. What attention-guided
    pruners (hiprune) read; the session calls it, a pruner never does."""
    graphed: bool = False
    """`full` is replayed as a CUDA graph (`SessionConfig(encode="graph")`): a token cache's dense passes that
    keep no state (a pan's) call it instead of running the runner's blocks."""


@dataclass(frozen=True)
class Blob:
    """Bytes a store keeps outside memory (a disk tier's), passed to or from a snapshot one blob at a time:
    `read()` returns them as a flat uint8 CPU tensor."""

    nbytes: int
    read: Callable[[], torch.Tensor]


def load_fields(record: Any, values: dict[str, Any]) -> Any:
    """Set a dataclass record's fields from `values` (as `dataclasses.asdict` gave them, possibly through
    JSON): lists become tuples where the field holds a tuple. Unknown names are ignored; returns `record`."""
    for name, value in values.items():
        if hasattr(record, name):
            current = getattr(record, name)
            setattr(record, name, tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value)
    return record


InlineSelect = Callable[[int, dict[int, torch.Tensor]], "dict[int, tuple[torch.Tensor, torch.Tensor]] | None"]
"""A one-pass KV policy's choice inside a question's forward: (layer, queries of the layers so far, each
(1, heads, q_len, dim)) -> {layer: (keys, values) (1, kv_heads, n, dim)}, the new pasts from that layer on,
or None (nothing chosen at this layer)."""
