"""`hiprune` (HiPrune): hierarchical selection from the vision encoder's own attention, training-free.

HiPrune observes that a ViT's middle layers attend to objects and its deep layers to a few global,
register-like tokens, and selects, per image:

    anchors    the tokens receiving the most attention in a middle (object-centric) layer
    buffers    the grid neighbours (4-neighbourhood) of the anchors, kept for spatial continuity
    registers  the tokens receiving the most attention in a deep layer, filling the rest of the budget

Here the attention each token receives is the vision tower's own (softmax of its queries and keys in that
block, within its attention window, averaged over heads and queries, summed over the 2x2 patches a merged
token holds): the model's vision encoder reports it and the session passes it in `VisualChunk.attention`
(`vision_layers` asks for the two layers), so the pruner never runs the model. The shares of the budget are
`anchor_share` anchors, up to `buffer_share` buffers (the neighbours of higher-ranked anchors first), the
rest registers: exactly k tokens. Adapted to streaming: per chunk (a temporal patch), no look-ahead; it
cannot be combined with a ViT feature cache (reused tokens have no fresh attention). Budget 1.0 keeps all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class HiPruneConfig(PrunerConfig):
    """Anchors from a middle ViT layer's attention, their grid neighbours, registers from a deep layer's."""

    strategy: str = "hiprune"
    """Registered strategy name."""
    anchor_layer: float = 0.5
    """The object-centric middle layer, as a fraction of the tower's depth (0: first block, 1: last)."""
    register_layer: float = 1.0
    """The deep layer whose most-attended tokens are the registers, as a fraction of the depth."""
    anchor_share: float = 0.5
    """Share of the budget taken by anchors (at least 1 token). 0.5 / 0.25 was chosen over 0.25 / 0.5 on the
    yardstick's validation split (benchmarks/accuracy.py --split val)."""
    buffer_share: float = 0.25
    """Most of the budget taken by the anchors' grid neighbours."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("anchor_layer", "register_layer"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a fraction of the depth in [0, 1], got {getattr(self, name)}")
        if not (0.0 < self.anchor_share <= 1.0 and 0.0 <= self.buffer_share <= 1.0 - self.anchor_share):
            raise ConfigError(
                f"need 0 < anchor_share <= 1 and 0 <= buffer_share <= 1 - anchor_share, got "
                f"{self.anchor_share}, {self.buffer_share}"
            )
        if self.merge != "none":
            raise ConfigError("hiprune selects tokens: merge must be 'none'")


def hierarchical_select(
    middle: torch.Tensor, deep: torch.Tensor, grid_hw: tuple[int, int], k: int, anchors: int, buffers: int
) -> torch.Tensor:
    """Ascending indices of exactly min(k, N) tokens: `anchors` top of `middle`, up to `buffers` of their
    4-neighbours (in anchor rank order), the rest the top of `deep` (ties to the lower index everywhere)."""
    n = middle.numel()
    k = min(k, n)
    h, w = grid_hw
    chosen = torch.zeros(n, dtype=torch.bool)
    rank = torch.sort(-middle.float().cpu(), stable=True).indices
    top = rank[: min(anchors, k)].tolist()
    chosen[top] = True
    room = min(buffers, k - len(top))
    for a in top:
        i, j = divmod(a, w)
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            if room and 0 <= i + di < h and 0 <= j + dj < w and not chosen[(i + di) * w + j + dj]:
                chosen[(i + di) * w + j + dj] = True
                room -= 1
    rest = k - int(chosen.sum())
    if rest:
        score = deep.float().cpu().masked_fill(chosen, float("-inf"))
        chosen[torch.sort(-score, stable=True).indices[:rest]] = True
    return chosen.nonzero().squeeze(1).to(middle.device)


@register_pruner("hiprune")
class HiPrunePruner(BasePruner):
    """HiPrune from the vision encoder's attention (reported by the encoder, passed in by the session)."""

    config_class = HiPruneConfig
    config: HiPruneConfig

    def __init__(self, config: HiPruneConfig | None = None) -> None:
        super().__init__(config)
        self.vision_layers = (self.config.anchor_layer, self.config.register_layer)

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        n = chunk.num_tokens
        if k >= n:
            return torch.arange(n, device=chunk.embeds.device)
        if chunk.attention is None or len(chunk.attention) != 2:
            raise ConfigError("hiprune needs the vision encoder's attention in the chunk (run it in a Session)")
        middle, deep = chunk.attention
        anchors = max(1, round(self.config.anchor_share * k))
        return hierarchical_select(
            middle, deep, chunk.grid_thw[1:], k, anchors, round(self.config.buffer_share * k)
        )
