"""`temporal` (EVS-like): keep the tokens that changed most since the token last kept at the same place.

Per grid position the pruner remembers the token it last let into the context (a per-stream reference).
Scores, per chunk:
  - at a position already kept: 1 - cosine(token, reference), the least similar first;
  - at a position never kept yet (the first chunk, or what earlier budgets left out): 1 - cosine(token,
    the chunk's mean token), how much it would add, so coverage fills in where nothing moves;
  - a token the ViT feature cache reused (`changed == False`) is by the cache's own test unchanged: it is
    dropped without computing anything when `drop_reused` (its position already holds a kept token);
  - with a `threshold`, a token at least that similar to its reference is dropped even when the budget
    has room, so a static scene costs almost nothing after its first chunk.
Then the `budget` caps what is left (the most changed first). Budget ratio 1.0, no threshold and no
feature cache keep every token: the baseline, exactly.
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
class TemporalConfig(PrunerConfig):
    """Drop what did not change since the token last kept at the same (h, w) position."""

    strategy: str = "temporal"
    """Registered strategy name."""
    threshold: float | None = None
    """Cosine similarity to the reference at or above which a token is dropped regardless of the budget
    (0.9-0.99 for real models); None: the budget alone decides (EVS)."""
    drop_reused: bool = True
    """Drop tokens the ViT feature cache reused (its `changed` mask is False) once their position was kept."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"threshold must be a cosine similarity in [-1, 1] or None, got {self.threshold}"
            )
        if self.merge != "none":
            raise ConfigError("temporal drops repeats of tokens already in the context: merge must be 'none'")


@register_pruner("temporal")
class TemporalPruner(BasePruner):
    """EVS-like temporal redundancy pruning against the last kept token at each position (causal)."""

    config_class = TemporalConfig
    config: TemporalConfig
    exact = False  # a threshold or reused tokens drop more than the budget asks

    def __init__(self, config: TemporalConfig | None = None) -> None:
        super().__init__(config)
        self._grid: tuple[int, int, int] | None = None
        self._ref: torch.Tensor | None = None  # (N, D) unit rows: the token last kept at each position
        self._has_ref: torch.Tensor | None = None  # (N,) bool

    def state_dict(self) -> dict[str, Any]:
        grid = list(self._grid) if self._grid else None
        return {**super().state_dict(), "grid": grid, "ref": self._ref, "has_ref": self._has_ref}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self._grid = tuple(state["grid"]) if state["grid"] else None  # type: ignore[assignment]
        self._ref, self._has_ref = (t.to(device) if t is not None else None for t in (state["ref"], state["has_ref"]))

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        n, dev = chunk.num_tokens, chunk.embeds.device
        x = unit_rows(chunk.embeds)
        if self._grid != chunk.grid_thw or self._ref is None or self._has_ref is None:  # first or new grid
            self._grid = chunk.grid_thw
            self._ref = torch.zeros_like(x)
            self._has_ref = torch.zeros(n, dtype=torch.bool, device=dev)
        has_ref = self._has_ref
        # masks by arithmetic, not boolean indexing: on a GPU an index by a mask waits for the device
        reused = has_ref & ~chunk.changed if chunk.changed is not None else torch.zeros_like(has_ref)
        compare = has_ref & ~reused
        sim = torch.where(compare, (x * self._ref).sum(-1), 1.0)
        drop = reused if self.config.drop_reused else torch.zeros_like(has_ref)
        if self.config.threshold is not None:
            drop = drop | (has_ref & (sim >= self.config.threshold))
        new_score = 1.0 - x @ unit_rows(x.mean(0, keepdim=True))[0]  # spatial saliency where nothing was kept
        score = torch.where(has_ref, 1.0 - sim, new_score).masked_fill_(drop, float("-inf"))
        droppable = (self.config.drop_reused and chunk.changed is not None) or self.config.threshold is not None
        left = int((~drop).sum()) if droppable else n  # the kept count sizes the chunk: one read, when it varies
        keep = top_k(score, min(k, left))
        self._ref[keep] = x[keep]
        has_ref[keep] = True
        return keep
