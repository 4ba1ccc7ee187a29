"""How far tokens moved: the change measure the token policy's dynamic and fixed-shape partial passes share, the
chunk tests read from it and the rows a partial pass recomputes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Per row L2 norm as float32 (reduced in x's dtype, which accumulates in float32: no float copy of x)."""
    return torch.linalg.vector_norm(x, dim=-1).float()


def relative_change(delta: torch.Tensor, ref_norms: torch.Tensor) -> torch.Tensor:
    """Per row: |delta| / |ref| (L2, float32)."""
    return row_norms(delta) / ref_norms.clamp_min(1e-6)


@dataclass(frozen=True)
class ChunkTests:
    """What a chunk's moved patch embeddings say: a scene cut (over `cut_fraction` moved past `cut_change`), a
    spread (over `pan_fraction` moved past `threshold`: busy), a drift since the last refresh (`drift_limit`)."""

    cut: bool
    spread: bool
    drift: bool


def chunk_tests(config: Any, moved: torch.Tensor, drifted: torch.Tensor) -> ChunkTests:
    """The tests of a `ViTCacheConfig` on per-token change since the last chunk (`moved`) and since the last
    refresh (`drifted`), computed on the device and read at once (on a GPU each read waits for it)."""
    flags = torch.stack([
        (moved > config.cut_change).float().mean() > config.cut_fraction,
        (moved > config.threshold).float().mean() > config.pan_fraction,
        (drifted > config.threshold).float().mean() > config.drift_limit,
    ])  # fmt: skip
    return ChunkTests(*flags.tolist())


def select_tokens(change: torch.Tensor, threshold: float, cap: int) -> torch.Tensor:
    """Rows whose change exceeds `threshold`, at most `cap` of them (the largest), in ascending order."""
    over = change > threshold
    count = int(over.sum())
    if count <= cap:
        return over.nonzero()[:, 0]
    return torch.topk(change, cap).indices.sort().values
