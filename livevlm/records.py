"""Records every stage shares: a chunk of visual tokens, where it sits, and the KV layout values.

Stages import these from here (never from each other), so stream/, models/, prune/ and cache/ stay layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class VisualChunk:
    """Visual tokens of one temporal patch (`frames_per_chunk` frames) with their 3D (t, h, w) positions."""

    embeds: torch.Tensor  # (N, D) in the LLM's embedding space
    positions: torch.Tensor  # (3, N) long: M-RoPE (t, h, w) ids, absolute in the stream
    grid_thw: tuple[int, int, int]  # LLM-side grid (t=1, h, w) after spatial merge
    pts_seconds: tuple[float, ...]  # timestamps of the frames it covers
    encode_seconds: float = 0.0
    changed: torch.Tensor | None = None  # (N,) bool from the feature cache: token recomputed (None: all new)
    kept_index: torch.Tensor | None = None  # (N_kept,) long, set by a pruner: rows kept of the full chunk
    attention: tuple[torch.Tensor, ...] | None = None  # per requested ViT layer: (N,) attention received

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])


@dataclass(frozen=True)
class ChunkPlace:
    """Where a chunk sits: its index in the stream, the video's start position, seconds per chunk."""

    index: int
    offset: int
    seconds_per_chunk: float


@dataclass(frozen=True)
class KVLayout:
    """Shape and placement of a language model's KV: what a store needs to hold it, as plain values."""

    layers: int
    kv_heads: int
    head_dim: int
    device: torch.device
    dtype: torch.dtype

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
