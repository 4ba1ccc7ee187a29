"""A session's dense vision encodes replayed as CUDA graphs (`SessionConfig(encode="graph")`), one per frame size.

    pixels ─► copied into the grid's input buffer ─► encode(buffer, grid): eager once, captured, then replayed

A live stream's chunks keep one frame size, so the tower's whole pass has fixed shapes: at the Qwen2.5-VL-7B
shape on an H200 a chunk was 88 ms of wall time for 18 ms of GPU work (2 857 kernel launches, about a third of
them the vision tower's), the overhead a replay removes. A new frame size builds its own graph (at most `LIMIT`
kept); an encode that cannot be captured (it syncs with the host: transformers' own Qwen vision forward, chosen
under LIVEVLM_KERNELS=torch) runs eagerly from then on and `path` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..kernels.cuda_graph import GraphedCall

EAGER_FOR_ATTENTION = "eager: the pruner reads the tower's attention"
"""The path of encodes an attention-guided pruner (hiprune) needs: they return attention maps, never replayed."""

LIMIT = 4
"""Frame sizes whose graphs are kept at once (a stream changes size rarely; each graph holds its activations)."""


class GraphedEncode:
    """`encode(pixels, grid)` with the same contract as the model's dense encode (`VisionEncoder.full`)."""

    def __init__(self, encode: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]) -> None:
        self.encode = encode
        self._graphs: dict[tuple, tuple[torch.Tensor, GraphedCall]] = {}
        self.path = "graph"
        """"graph", or "eager: the graph capture failed, <why>" once a capture failed."""
        self.calls: dict[str, int] = {}
        """Encodes per path taken."""

    @torch.inference_mode()  # the buffers are inference tensors, as the eager encode's outputs are
    def __call__(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        key = (tuple(grid), tuple(pixels.shape), pixels.dtype, pixels.device)
        entry = self._graphs.get(key)
        if entry is None:
            if pixels.device.type != "cuda":
                raise ConfigError(f"encode='graph' needs the vision tower on CUDA, it runs on {pixels.device}")
            if len(self._graphs) >= LIMIT:
                self._graphs.clear()
            buffer = torch.empty_like(pixels)
            entry = self._graphs[key] = (buffer, GraphedCall(lambda: self.encode(buffer, grid)))
        buffer, call = entry
        buffer.copy_(pixels)
        out = call().clone()  # the graph's output is overwritten by the next replay
        if call.failed is not None:
            self.path = f"eager: the graph capture failed, {call.failed}"
        self.record(self.path)
        return out

    def record(self, path: str) -> None:
        """Count one encode taken by `path` (also the session's eager ones for an attention-guided pruner)."""
        self.calls[path] = self.calls.get(path, 0) + 1
