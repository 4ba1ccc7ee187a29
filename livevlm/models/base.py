"""The adapter protocol every model family implements, and the typed records its stages return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
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

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])


@dataclass(frozen=True)
class ChunkPlace:
    """Where a chunk sits: its index in the stream, the video's start position, seconds per chunk."""

    index: int
    offset: int
    seconds_per_chunk: float


class VideoLMAdapter(Protocol):
    """What `Session` needs from a model family: encode frames, embed text, run the LLM on a cache."""

    family: str
    frames_per_chunk: int
    eos_token_ids: frozenset[int]
    max_context: int

    def encode(
        self, frames: np.ndarray, size: tuple[int, int], place: ChunkPlace, feature_cache: Any = None
    ) -> VisualChunk:
        """Frames (T, H, W, 3) uint8 of one temporal patch, resized to `size` -> tokens placed by `place`."""
        ...

    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]: ...

    def tokens_per_chunk(self, size: tuple[int, int]) -> int: ...

    def prefix_ids(self, system_prompt: str) -> list[int]: ...

    def suffix_ids(self, question: str) -> list[int]: ...

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor: ...

    def text_start_after_video(self, place: ChunkPlace, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        """Position id of the first text token after `num_chunks` chunks of video placed at `offset`."""
        ...

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append (L, D) embeds at (3, L) positions to `cache`; return the last position's logits (V,)."""
        ...

    def new_cache(self) -> Any: ...

    def decode_text(self, ids: Sequence[int]) -> str: ...
