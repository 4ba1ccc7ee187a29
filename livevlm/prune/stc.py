"""`stc` (STC-Pruner): keep the tokens least similar to two anchors, by multi-scale gaussian similarity.

From the STC paper's token pruner (spatio-temporal compression for streaming video LLMs), as we read it:

    channels  the `channel_ratio` share of channels with the LOWEST variance over the chunk's tokens (unit
              rows): the stable channels, where a token's distance to an anchor is not dominated by the few
              high-variance channels every token swings on
    anchors   spatial: the chunk's mean token; temporal: per (h, w) position, a running mean of the tokens
              seen there in past chunks (momentum `momentum`), like `dual_anchor`'s
    similarity  sim(x, a) = mean over s in `scales` of exp(-d^2 / (2 (s * sigma)^2)),  d^2 = ||x_c - a_c||^2
              on those channels; sigma^2 is the median d^2 over the chunk (a per-chunk bandwidth, so the
              scales mean the same on any model's features)
    score     1 - (spatial_weight * sim_spatial + (1 - spatial_weight) * sim_temporal); the top `budget`
              scores are kept (ties to the lower index) at their original positions

Adapted to streaming: the paper's "frame" is our chunk (one temporal patch); the temporal anchor is built
only from past chunks (no look-ahead); the first chunk of a stream (or of a new grid) is scored on the
spatial anchor alone. Anchors are updated with every token of the chunk, kept or not. `dual_anchor` is the
cosine variant of the same idea (all channels, 1 - cosine); this one is the paper's similarity.
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
class STCConfig(PrunerConfig):
    """STC-Pruner: dual anchors, multi-scale gaussian similarity on the low-variance channels."""

    strategy: str = "stc"
    """Registered strategy name."""
    spatial_weight: float = 0.5
    """Weight of the spatial (chunk mean) anchor's similarity; the temporal anchor gets the rest."""
    momentum: float = 0.5
    """Share of the old temporal anchor kept at each chunk (0: only the previous chunk counts)."""
    channel_ratio: float = 0.5
    """Share of channels (the lowest-variance ones in the chunk) the similarity is measured on; 1.0: all."""
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Gaussian bandwidths as multiples of the chunk's median anchor distance; the similarities are averaged."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.spatial_weight <= 1.0:
            raise ConfigError(f"spatial_weight must be in [0, 1], got {self.spatial_weight}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.channel_ratio <= 1.0:
            raise ConfigError(f"channel_ratio must be in (0, 1], got {self.channel_ratio}")
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or not all(s > 0 for s in self.scales):
            raise ConfigError(f"scales must be one or more positive numbers, got {self.scales}")


def gaussian_similarity(x: torch.Tensor, anchor: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """(N,) mean over `scales` of exp(-d^2 / (2 (s sigma)^2)), sigma^2 the median d^2 (x, anchor: (N|1, C))."""
    d2 = (x - anchor).square().sum(-1)
    sigma2 = d2.median().clamp_min(1e-12)
    return torch.stack([torch.exp(-d2 / (2.0 * s * s * sigma2)) for s in scales]).mean(0)


class STCScorer:
    """Per-stream STC state: the temporal anchor per position; `scores(chunk)` also updates it."""

    def __init__(self, config: STCConfig) -> None:
        self.config = config
        self.grid: tuple[int, int, int] | None = None
        self.anchor: torch.Tensor | None = None  # (N, D) unit-row running mean per position

    def scores(self, chunk: VisualChunk) -> torch.Tensor:
        """(N,) redundancy-free score: high = unlike both anchors (kept first)."""
        c = self.config
        x = unit_rows(chunk.embeds)
        if self.grid != chunk.grid_thw:
            self.grid, self.anchor = chunk.grid_thw, None
        n_ch = max(1, round(c.channel_ratio * x.shape[1]))
        channels = torch.sort(x.var(0, unbiased=False), stable=True).indices[:n_ch]
        xc = x[:, channels]
        sim = gaussian_similarity(xc, xc.mean(0, keepdim=True), c.scales)
        if self.anchor is not None:
            temporal = gaussian_similarity(xc, self.anchor[:, channels], c.scales)
            sim = c.spatial_weight * sim + (1.0 - c.spatial_weight) * temporal
        m = c.momentum
        self.anchor = x.clone() if self.anchor is None else self.anchor.mul_(m).add_(x, alpha=1.0 - m)
        return 1.0 - sim


@register_pruner("stc")
class STCPruner(BasePruner):
    """STC-Pruner: the `budget` tokens least like the chunk's mean and their position's past (causal)."""

    config_class = STCConfig
    config: STCConfig

    def __init__(self, config: STCConfig | None = None) -> None:
        super().__init__(config)
        self._scorer = STCScorer(self.config)

    def state_dict(self) -> dict[str, Any]:
        sc = self._scorer
        return {**super().state_dict(), "grid": list(sc.grid) if sc.grid else None, "anchor": sc.anchor}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        sc = self._scorer
        sc.grid = tuple(state["grid"]) if state["grid"] else None  # type: ignore[assignment]
        sc.anchor = state["anchor"].to(device) if state["anchor"] is not None else None

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        return top_k(self._scorer.scores(chunk), k)
