"""`keyframe` (KFFocus-style): a chunk's token budget follows how much it changed; an in-frame selector picks.

KFFocus (keyframe-focused token allocation for video LLMs) gives keyframes -- frames that differ most from
the one before -- more tokens and near-repeats fewer, then selects tokens inside each frame. Here:

    change   u = mean over positions of 1 - cos(token, the previous chunk's token there) (a token the ViT
             cache reused counts 0); the first chunk of a stream (or of a new grid) is a keyframe
    share    clip(u / max(mean_u, change_floor), min_share, max_share), mean_u a running mean of past u;
             a keyframe's share is `max_share`
    spend    min(N, round(k * share), credit + debt_chunks * k), at least 1 token; credit += k - spend,
             capped at debt_chunks * k
    then `selector` (stc, dual_anchor or uniform) keeps `spend` tokens of the chunk

Adapted to streaming: KFFocus allocates over a whole clip; a live stream has no future frames, so a keyframe
spends AHEAD of its budget (up to `debt_chunks` chunks' budgets of debt) and the chunks after it repay.
Over any prefix of the stream the tokens kept never exceed the budgets summed plus `debt_chunks * k`
(`adaptive`, by contrast, saves first and spends later, and never exceeds the budgets). A full budget
(ratio 1.0, or `k >= N`) keeps every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels.similarity import unit_rows
from ..records import VisualChunk
from .base import PRUNERS, BasePruner, register_pruner
from .config import PrunerConfig

SELECTORS = ("stc", "dual_anchor", "uniform")


@dataclass
class KeyframeConfig(PrunerConfig):
    """Per-chunk budgets by change from the previous chunk (keyframes get more), then an in-frame selector."""

    strategy: str = "keyframe"
    """Registered strategy name."""
    selector: str = "stc"
    """In-frame selector for the tokens a chunk may keep: stc, dual_anchor or uniform (their defaults)."""
    min_share: float = 0.25
    """Least fraction of its budget a chunk spends (a repeat of the previous chunk)."""
    max_share: float = 2.0
    """Most a chunk spends, in multiples of its budget (a keyframe)."""
    debt_chunks: float = 1.0
    """How many chunks' budgets a keyframe may spend ahead (repaid by the next chunks); also the credit cap."""
    change_floor: float = 0.02
    """Smallest running-mean change used as the reference (keeps a still stream from looking busy)."""
    momentum: float = 0.5
    """Share of the old running-mean change kept at each chunk."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selector not in SELECTORS:
            raise ConfigError(f"selector must be one of {', '.join(SELECTORS)}, got {self.selector!r}")
        if not 0.0 < self.min_share <= 1.0 <= self.max_share:
            raise ConfigError(f"need 0 < min_share <= 1 <= max_share, got {self.min_share}, {self.max_share}")
        if self.debt_chunks < 0 or self.change_floor <= 0 or not 0.0 <= self.momentum < 1.0:
            raise ConfigError("need debt_chunks >= 0, change_floor > 0 and momentum in [0, 1)")


@register_pruner("keyframe")
class KeyframePruner(BasePruner):
    """Keyframes (big change from the previous chunk) spend more of the stream's budget, repeats less."""

    config_class = KeyframeConfig
    config: KeyframeConfig
    exact = False  # a chunk's share follows its change; the stream's total is bounded (see the module)

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        selector_config = PRUNERS.config_class(c.selector)(budget=c.budget, fps=c.fps)
        self.selector = PRUNERS.load(c.selector)(selector_config)
        self.credit = 0.0
        self.mean_change: float | None = None
        self._previous: torch.Tensor | None = None
        self._grid: tuple[int, int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selector": self.selector.state_dict(), "keyframe_credit": self.credit,
                "mean_change": self.mean_change, "previous": self._previous,
                "grid": list(self._grid) if self._grid else None}  # fmt: skip

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        super().load_state(state, device)
        self.selector.load_state(state["selector"], device)
        self.credit, self.mean_change = float(state["keyframe_credit"]), state["mean_change"]
        self._previous = state["previous"].to(device) if state["previous"] is not None else None
        self._grid = tuple(state["grid"]) if state["grid"] else None  # type: ignore[assignment]

    def change(self, chunk: VisualChunk) -> float | None:
        """Mean cosine distance to the previous chunk at the same positions (None: a first chunk)."""
        x = unit_rows(chunk.embeds)
        previous, self._previous = self._previous, x
        if previous is None or self._grid != chunk.grid_thw:
            self._grid = chunk.grid_thw
            return None
        distance = 1.0 - (x * previous).sum(-1)
        if chunk.changed is not None:  # the feature cache reused these: identical to the previous chunk
            distance = torch.where(chunk.changed, distance, torch.zeros_like(distance))
        return float(distance.mean()) if chunk.num_tokens else 0.0

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        c, n = self.config, chunk.num_tokens
        u = self.change(chunk)
        if k >= n:
            spend = n
        else:
            share = c.max_share
            if u is not None:
                share = u / max(self.mean_change or 0.0, c.change_floor)
                share = min(max(share, c.min_share), c.max_share)
            self.credit += k
            spend = max(1, min(n, int(k * share + 0.5), int(self.credit + c.debt_chunks * k)))
            self.credit = min(self.credit - spend, c.debt_chunks * k)
        if u is not None:
            m = c.momentum
            self.mean_change = u if self.mean_change is None else m * self.mean_change + (1 - m) * u
        return self.selector.select(chunk, spend)
