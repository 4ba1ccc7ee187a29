"""`uniform`: a content-blind spatial subsample (ordered dither: stride 2 at a quarter), optionally pooled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.similarity import dither_rank, top_k
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class UniformConfig(PrunerConfig):
    """Keep `budget` tokens spread evenly over the grid; `merge="nearest"` makes it average pooling."""

    strategy: str = "uniform"
    """Registered strategy name."""


@register_pruner("uniform")
class UniformPruner(BasePruner):
    """The same evenly spread cells in every chunk, whatever they show (a spatial-stride baseline)."""

    config_class = UniformConfig

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        _, h, w = chunk.grid_thw
        return top_k(-dither_rank(h, w, chunk.embeds.device).float(), k)
