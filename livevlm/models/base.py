"""The adapter protocol every model family implements: the only code that calls a model or builds positions.

The loop (`Session`) calls these; caches and stores receive plain tensors, views and layout values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..records import ChunkPlace, KVLayout, VisionEncoder, VisualChunk

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ChunkPlace", "VideoLMAdapter", "VisualChunk", "check_adapter"]
_ADAPTER_PARTS = ("fingerprint", "frames_per_chunk", "kv_layout", "vision_encoder", "preprocess")


class VideoLMAdapter(Protocol):
    """What `Session` needs from a model family: preprocess and encode frames, place tokens, run the LLM."""

    family: str
    frames_per_chunk: int
    eos_token_ids: frozenset[int]
    max_context: int
    device: torch.device
    dtype: torch.dtype

    def fingerprint(self) -> str:
        """The checkpoint's identity (same weights and config: same string); session snapshots are tied to it."""
        ...

    # vision
    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]: ...

    def tokens_per_chunk(self, size: tuple[int, int]) -> int: ...

    def preprocess(self, frames: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Frames (T, H, W, 3) uint8 of one temporal patch resized to `size` -> (patches on device, grid)."""
        ...

    def vision_encoder(self) -> VisionEncoder:
        """The vision tower as a ViT feature cache wraps it (full encode, optional block runner)."""
        ...

    def merged_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        """(h, w) of the LLM-side token grid of a patch grid (after spatial merge)."""
        ...

    def chunk_text_ids(self, place: ChunkPlace, pts_seconds: tuple[float, ...]) -> tuple[list[int], list[int]]:
        """Token ids the model's prompt puts before and after the visual tokens of the chunk at `place` whose
        frames have `pts_seconds` (timestamps, image delimiters); ([], []) for none. The session places them
        from `place.start` and the visual tokens right after the text before."""
        ...

    # positions: the only place they are built
    def video_positions(self, place: ChunkPlace, h: int, w: int) -> torch.Tensor:
        """(P, h*w) position ids of the visual tokens of the chunk at `place` (P = 3 for M-RoPE, 1 for 1-D), in
        host memory: the session reads their highest value there and uploads them (`kernels.transfer.upload`) without a
        device sync."""
        ...

    def text_positions(self, start: int, count: int) -> torch.Tensor:
        """Position ids of `count` text tokens starting at `start`."""
        ...

    def text_start_after_video(self, place: ChunkPlace, num_chunks: int, grid_hw: tuple[int, int]) -> int:
        """Position id of the first text token after `num_chunks` chunks of video placed at `offset`."""
        ...

    # text
    def prefix_ids(self, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]: ...

    def suffix_ids(self, question: str) -> list[int]: ...

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor: ...

    def decode_text(self, ids: Sequence[int]) -> str: ...

    # language model
    def kv_layout(self) -> KVLayout: ...

    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any, all_logits: bool = False
    ) -> torch.Tensor:
        """Append (L, D) embeds at `positions` to `cache`; return the last position's logits (V,), or every
        position's (L, V) with `all_logits`."""
        ...

    def extend(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> None:
        """Append (L, D) embeds at `positions` to `cache` without computing logits (ingestion)."""
        ...

    def answer_ids(self, text: str) -> list[int]:
        """Token ids of `text` as an answer, ended by the end-of-turn token (scoring answer choices)."""
        ...

    def enable_query_probe(self) -> None:
        """Make `question_queries` possible (a query-aware KV policy is in use); idempotent."""
        ...

    def question_queries(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """(layers, heads, q_len, head_dim): each layer's query states of every token of `embeds`, with
        `cache` as the past. The cache is a throwaway view: what the forward appends to it is discarded."""
        ...


def check_adapter(model: object) -> VideoLMAdapter:
    """`model` when it is a loaded adapter; anything else given where a model goes (a config, a dict, bytes) is a
    `ConfigError` naming what goes there, not an AttributeError from deep in the session."""
    missing = [name for name in _ADAPTER_PARTS if not hasattr(model, name)]
    if not missing:
        return model  # type: ignore[return-value]
    hint = ""
    if type(model).__name__ == "SessionConfig" or isinstance(model, dict):
        hint = ": the config goes second, Session(model, config) (None as the model: the bundled default)"
    raise ConfigError(
        "model must be a checkpoint path or hub id (str or Path), a model loaded with livevlm.load_model, or None "
        f"for the bundled default, not {type(model).__name__}{hint}"
    )
