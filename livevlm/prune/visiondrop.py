"""`visiondrop` (VisionDrop): visual-only importance from visual-to-visual attention, dropped in stages, merged.

VisionDrop (training-free visual token pruning from intra-modal attention) ranks visual tokens by the
attention they RECEIVE from the other visual tokens -- no text query involved -- drops the least important
progressively at several stages, and merges the dropped tokens into the kept ones they resemble. Here:

    attention  A = softmax(U U^T / temperature) over each row, U the unit-norm tokens, self-attention masked:
               a light similarity attention computed from the embeddings (not the LLM's attention)
    score      s_j = mean_i A[i, j]: how much the other tokens attend to token j
    stages     `stages` steps from N to k tokens, each keeping round(N (k/N)^(s/stages)) (exactly k at the
               end); the attention is recomputed among the survivors at every stage
    merge      each dropped token is averaged into the kept token it attends to most, size-weighted (a token
               that absorbed others counts as that many), so later stages see what earlier ones folded in
Kept tokens keep their (t, h, w) positions. Adapted to streaming: the paper drops inside the ViT and the
LLM's early layers; here all stages run on the vision output of one chunk (no look-ahead), before the LLM.
Budget 1.0 keeps every token unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..kernels.similarity import top_k, unit_rows
from ..records import VisualChunk
from .base import BasePruner, register_pruner
from .config import PrunerConfig


@dataclass
class VisionDropConfig(PrunerConfig):
    """Progressive dropping by visual-to-visual attention received, dropped tokens merged into kept ones."""

    strategy: str = "visiondrop"
    """Registered strategy name."""
    stages: int = 3
    """Dropping stages from the chunk's N tokens to the budget's k (geometric steps)."""
    temperature: float = 0.1
    """Softmax temperature of the similarity attention (on cosine similarities)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stages < 1:
            raise ConfigError(f"stages must be >= 1, got {self.stages}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.merge != "none":
            raise ConfigError("visiondrop merges dropped tokens itself (size-weighted): merge must be 'none'")


def received_attention(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) mean attention each row receives from the others under softmax(cos / temperature), self masked."""
    u = unit_rows(x)
    logits = (u @ u.T) / temperature
    if x.shape[0] > 1:
        logits.fill_diagonal_(float("-inf"))
    return torch.softmax(logits, dim=1).mean(0)


def progressive_drop(x: torch.Tensor, k: int, stages: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept row indices ascending, (k, D) float32 size-weighted means) after `stages` drop-and-merge steps."""
    n = x.shape[0]
    alive = torch.arange(n, device=x.device)
    total, size = x.float().clone(), torch.ones(n, device=x.device)
    for s in range(1, stages + 1):
        target = k if s == stages else max(k, round(n * (k / n) ** (s / stages)))
        if target >= alive.numel():
            continue
        means = total[alive] / size[alive, None]
        keep = top_k(received_attention(means, temperature), target)
        dropped = torch.ones(alive.numel(), dtype=torch.bool, device=x.device)
        dropped[keep] = False
        u = unit_rows(means)
        into = (u[dropped] @ u[keep].T).argmax(dim=1)  # the kept token each dropped one resembles most
        src, dst = alive[dropped], alive[keep][into]
        total.index_add_(0, dst, total[src])
        size.index_add_(0, dst, size[src])
        alive = alive[keep]
    return alive, total[alive] / size[alive, None]


@register_pruner("visiondrop")
class VisionDropPruner(BasePruner):
    """VisionDrop on the vision output: exactly `budget` tokens, the dropped ones merged into them."""

    config_class = VisionDropConfig
    config: VisionDropConfig

    def reduce(self, chunk: VisualChunk, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = chunk.num_tokens
        if k >= n:
            return torch.arange(n, device=chunk.embeds.device), chunk.embeds, 0
        keep, means = progressive_drop(chunk.embeds, k, self.config.stages, self.config.temperature)
        return keep, means.to(chunk.embeds.dtype), n - int(keep.numel())
