"""`dual_anchor`: STC-Pruner's two anchors with cosine distance (a simplification; `stc` is the paper's form).

Keeps the tokens least similar to a spatial and a temporal anchor, on all channels, by 1 - cosine:

    spatial anchor   the chunk's mean token: tokens like the frame's bulk (sky, wall) are redundant
    temporal anchor  per (h, w) position, a running mean of the tokens seen there in past chunks
                     (momentum `momentum`): what has been on screen there for a while is redundant
    score = spatial_weight * (1 - cos(x, spatial)) + (1 - spatial_weight) * (1 - cos(x, temporal))

The first chunk (no past) is scored on the spatial anchor alone. The top `budget` scores are kept, ties to
the lower index, in their original order. Anchors are updated with every token of the chunk, kept or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels.similarity import top_k, unit_rows
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class DualAnchorConfig(PrunerConfig):
    """Spatial + temporal saliency: distance to the chunk's mean token and to a running per-position mean."""

    strategy: str = "dual_anchor"
    """Registered strategy name."""
    spatial_weight: float = 0.5
    """Weight of the spatial (chunk mean) anchor; the temporal anchor gets the rest."""
    momentum: float = 0.5
    """Share of the old temporal anchor kept at each chunk (0: only the previous chunk counts)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.spatial_weight <= 1.0:
            raise ConfigError(f"spatial_weight must be in [0, 1], got {self.spatial_weight}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


class AnchorState:
    """Per-stream temporal anchor: a running mean of unit tokens per grid position."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.grid: tuple[int, int, int] | None = None
        self.anchor: torch.Tensor | None = None  # (N, D) unit-row running mean
        self.previous: torch.Tensor | None = None  # (N, D) unit rows of the previous chunk

    def state_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid) if self.grid else None, "anchor": self.anchor, "previous": self.previous}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        self.grid = tuple(state["grid"]) if state["grid"] else None  # type: ignore[assignment]
        self.anchor, self.previous = (t.to(device) if t is not None else None for t in (state["anchor"], state["previous"]))

    def scores(self, chunk: VisualChunk, spatial_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(saliency (N,), temporal novelty (N,) vs the previous chunk or None); then updates the anchors."""
        x = unit_rows(chunk.embeds)
        if self.grid != chunk.grid_thw:
            self.grid, self.anchor, self.previous = chunk.grid_thw, None, None
        spatial = 1.0 - x @ unit_rows(x.mean(0, keepdim=True))[0]
        novelty = None
        if self.anchor is None or self.previous is None:
            score = spatial
        else:
            temporal = 1.0 - (x * unit_rows(self.anchor)).sum(-1)
            score = spatial_weight * spatial + (1.0 - spatial_weight) * temporal
            novelty = 1.0 - (x * self.previous).sum(-1)
            if chunk.changed is not None:  # reused by the feature cache: identical to the previous chunk
                novelty = torch.where(chunk.changed, novelty, torch.zeros_like(novelty))
        m = self.momentum
        self.anchor = x.clone() if self.anchor is None else self.anchor.mul_(m).add_(x, alpha=1.0 - m)
        self.previous = x
        return score, novelty


@register_pruner("dual_anchor")
class DualAnchorPruner(BasePruner):
    """STC-Pruner's anchors, cosine variant: the `budget` most salient tokens against the two anchors (causal, per stream)."""

    config_class = DualAnchorConfig
    config: DualAnchorConfig

    def __init__(self, config: DualAnchorConfig | None = None) -> None:
        super().__init__(config)
        self._anchors = AnchorState(self.config.momentum)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "anchors": self._anchors.state_dict()}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self._anchors.load_state(state["anchors"], device)

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        score, _ = self._anchors.scores(chunk, self.config.spatial_weight)
        return top_k(score, k)
