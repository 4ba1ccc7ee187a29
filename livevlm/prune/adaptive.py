"""`adaptive` (VidCom2-like): frame uniqueness decides each chunk's share of a global token budget.

Every chunk adds its budget `k` to a bank. Its uniqueness u is the mean cosine distance of its tokens to
the previous chunk's at the same positions (tokens the ViT cache reused count 0). Relative to the running
mean of past uniqueness (at least `uniqueness_floor`) it earns a share:

    want  = round(k * clip(u / max(mean_u, uniqueness_floor), min_share, max_share))
    spend = min(N, want, bank);  bank -= spend;  bank = min(bank, bank_chunks * k)

So a chunk like the last one (a static shot, a fully reused frame) spends little and banks the rest for
the next chunk that brings something new; over any prefix of the stream the tokens kept never exceed the
budgets summed. Inside a chunk, tokens are picked by `dual_anchor`'s saliency. The first chunk spends `k`.
A full budget (ratio 1.0, or `k >= N`) keeps every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels.similarity import top_k
from ..records import VisualChunk
from .base import register_pruner
from .dual_anchor import DualAnchorConfig, DualAnchorPruner


@dataclass
class AdaptiveConfig(DualAnchorConfig):
    """Per-chunk shares of the budget by uniqueness; dual-anchor saliency inside each chunk."""

    strategy: str = "adaptive"
    """Registered strategy name."""
    min_share: float = 0.1
    """Least fraction of its budget a chunk spends (a chunk identical to the last one)."""
    max_share: float = 3.0
    """Most a chunk may spend, in multiples of its budget (paid from the bank)."""
    bank_chunks: float = 4.0
    """Unspent tokens are kept for at most this many chunks' budgets."""
    uniqueness_floor: float = 0.02
    """Smallest running-mean uniqueness used as the reference (keeps a still stream from looking busy)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.min_share <= 1.0 <= self.max_share:
            raise ConfigError(
                f"need 0 <= min_share <= 1 <= max_share, got {self.min_share}, {self.max_share}"
            )
        if self.bank_chunks < 0 or self.uniqueness_floor <= 0:
            raise ConfigError("bank_chunks must be >= 0 and uniqueness_floor > 0")


@register_pruner("adaptive")
class AdaptivePruner(DualAnchorPruner):
    """Redistributes a stream's token budget from repetitive chunks to novel ones (causal)."""

    config_class = AdaptiveConfig
    config: AdaptiveConfig
    exact = False  # a chunk's share of the budget follows its uniqueness

    def __init__(self, config: AdaptiveConfig | None = None) -> None:
        super().__init__(config)
        self.bank = 0
        self.mean_uniqueness: float | None = None
        self.last_uniqueness: float | None = None

    def state_dict(self) -> dict[str, Any]:
        mine = {"bank": self.bank, "mean_uniqueness": self.mean_uniqueness, "last_uniqueness": self.last_uniqueness}
        return {**super().state_dict(), **mine}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self.bank, self.mean_uniqueness = int(state["bank"]), state["mean_uniqueness"]
        self.last_uniqueness = state["last_uniqueness"]

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        n, c = chunk.num_tokens, self.config
        score, novelty = self._anchors.scores(chunk, c.spatial_weight)
        u = float(novelty.mean()) if novelty is not None and n else None
        if k >= n:  # the budget holds the whole chunk: nothing to redistribute
            spend = n
        else:
            self.bank += k
            share = 1.0
            if u is not None:  # the first chunk (no past) spends its own budget
                share = u / max(self.mean_uniqueness or 0.0, c.uniqueness_floor)
                share = min(max(share, c.min_share), c.max_share)
            spend = min(n, self.bank, int(k * share + 0.5))
            self.bank = min(self.bank - spend, int(c.bank_chunks * k))
        if u is not None:
            m = c.momentum
            self.mean_uniqueness = (
                u if self.mean_uniqueness is None else m * self.mean_uniqueness + (1 - m) * u
            )
            self.last_uniqueness = u
        return top_k(score, spend)
