"""`tome` (ToMe, as used by AuroraCap / TinyChart): bipartite soft matching with size-weighted averages.

Token Merging (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) merges r tokens per ViT layer:

    1. split the tokens alternately into sets A (even) and B (odd)
    2. each token of A draws an edge to its most similar token of B (cosine)
    3. the r most similar edges are merged: the B token becomes the size-weighted average of itself and the
       A tokens that chose it; sizes add (a merged token counts as the tokens it holds)
    4. the unmerged A tokens and all of B go on

Adapted here: merging runs on the vision encoder's OUTPUT (the chunk's merged features), not between its
layers, and repeats rounds (each at most |A| merges) until exactly the budget's k tokens remain; similarity
is measured on the tokens themselves (ToMe uses the attention keys, which the output does not have), and
ToMe's proportional attention (log-size bias) is not applied in the LLM. A merged token keeps the (t, h, w)
position of its representative (the B token that survived). Each chunk is merged on its own (a chunk is a
temporal patch of 2 frames: no look-ahead). Budget 1.0 merges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..kernels.similarity import unit_rows
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class ToMeConfig(PrunerConfig):
    """Bipartite soft matching on the ViT output until `budget` tokens remain (size-weighted averages)."""

    strategy: str = "tome"
    """Registered strategy name."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge != "none":
            raise ConfigError("tome merges by its own matching (size-weighted): merge must be 'none'")


def bipartite_merge(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the rows of `x` (N, D) to `k` by rounds of bipartite soft matching.

    Returns (kept row indices ascending, (k, D) float32 size-weighted means of the rows each one holds)."""
    n = x.shape[0]
    alive = torch.arange(n, device=x.device)  # surviving representatives, ascending
    total = x.float().clone()  # per original row: the sum of the rows it holds (valid at alive rows)
    size = torch.ones(n, device=x.device)
    while alive.numel() > k:
        a, b = alive[0::2], alive[1::2]
        r = min(alive.numel() - k, a.numel())
        if b.numel() == 0:  # a single token cannot merge with anything
            break
        sim = unit_rows(total[a] / size[a, None]) @ unit_rows(total[b] / size[b, None]).T
        best, target = sim.max(dim=1)  # each A token's most similar B token (ties to the lower index)
        order = torch.sort(-best, stable=True).indices[:r]  # the r strongest edges (ties to the lower A)
        src, dst = a[order], b[target[order]]
        total.index_add_(0, dst, total[src])
        size.index_add_(0, dst, size[src])
        merged = torch.zeros(n, dtype=torch.bool, device=x.device)
        merged[src] = True
        alive = alive[~merged[alive]]
    return alive, total[alive] / size[alive, None]


@register_pruner("tome")
class ToMePruner(BasePruner):
    """ToMe on the ViT output: exactly `budget` tokens, each the size-weighted mean of what merged into it."""

    config_class = ToMeConfig
    config: ToMeConfig

    def reduce(self, chunk: VisualChunk, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = chunk.num_tokens
        if k >= n:
            return torch.arange(n, device=chunk.embeds.device), chunk.embeds, 0
        keep, means = bipartite_merge(chunk.embeds, k)
        return keep, means.to(chunk.embeds.dtype), n - int(keep.numel())
