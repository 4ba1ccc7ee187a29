"""The pruner protocol, its stats record, the strategy registry and the shared `BasePruner` loop.

    frames ─► admit(frames) ─► False: the session skips the ViT and stores nothing for the patch
    chunk (N tokens, (3, N) positions, changed mask) ─► BudgetMeter.allowance ─► k
        ─► strategy.select(chunk, k) ─► kept rows (ascending) ─► [merge dropped rows]
        ─► chunk of the kept rows, with their ORIGINAL (t, h, w) positions and `kept_index`

Every decision reads only the current chunk and state built from earlier ones (live streams have no
future). One pruner object per stream: all state lives in it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from ..kernels.similarity import merge_dropped
from ..records import VisualChunk, load_fields
from ..registry import Registry
from .config import BudgetMeter, PrunerConfig, parse_budget


@dataclass
class PruneStats:
    """Visual tokens that reached the pruner and what became of them."""

    strategy: str = "none"
    budget: str = "1.0"
    """The budget as `parse_budget` reads it: "64" tokens per chunk, "0.25" of them, "32/s"."""
    chunks: int = 0
    tokens_in: int = 0
    tokens_kept: int = 0
    tokens_dropped: int = 0
    """Tokens that did not enter the LLM (merged ones included)."""
    tokens_merged: int = 0
    """Dropped tokens averaged into a kept token instead of discarded."""
    chunks_skipped: int = 0
    """Chunks the pruner refused before the vision encoder (`admit` False): never encoded, all dropped."""
    chunks_floored: int = 0
    """Chunks whose budget (a ratio or rate) rounded to 0 tokens: each kept 1 token instead of none."""
    seconds: float = 0.0
    """Wall time spent deciding (and merging)."""

    @property
    def kept_ratio(self) -> float:
        return self.tokens_kept / self.tokens_in if self.tokens_in else 1.0


class Pruner(Protocol):
    """Takes one encoded chunk and returns the chunk with only the kept tokens (original positions)."""

    name: str
    stats: PruneStats
    vision_layers: tuple[float, ...]
    """ViT layers (fractions of the depth) whose attention the chunk must carry (`VisualChunk.attention`)."""

    def __call__(self, chunk: VisualChunk) -> VisualChunk: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None: ...

    def admit(self, frames: Sequence[np.ndarray]) -> bool:
        """Before the encoder: False skips this patch of (H, W, 3) uint8 frames entirely (`BasePruner`: True)."""
        ...


PRUNERS: Registry = Registry("pruner")
"""Strategy name -> pruner class (built as `cls(config)`), carrying its `config_class`."""


def register_pruner(name: str) -> Callable[[Any], Any]:
    """Class decorator: make a strategy (a class with a `config_class`) available as `name`."""

    def deco(cls: Any) -> Any:
        cls.name = name
        return PRUNERS.register(name, config=cls.config_class)(cls)

    return deco


def available_pruners() -> list[str]:
    return PRUNERS.names()


def build_pruner(spec: Any = "none") -> Pruner:
    """A fresh pruner (strategies keep per-stream state) from a strategy name or a config with `.strategy`.

    A name takes the strategy's default config; a generic `PrunerConfig` is turned into the strategy's own
    config class (shared fields kept, the rest default). Bad names and bad budgets raise `ConfigError`."""
    config = prune_config(spec)
    return PRUNERS.load(config.strategy)(config)


def prune_config(spec: Any = "none") -> PrunerConfig:
    """The strategy's own config from a name (its defaults) or any config with a registered `.strategy`."""
    if spec is None or isinstance(spec, str):
        return PRUNERS.config_class(spec or "none")()
    return PRUNERS.config_class(getattr(spec, "strategy", None)).from_config(spec)


def parse_prune_spec(strategy: str, budget: str | None = None) -> PrunerConfig:
    """The config for `--prune STRATEGY --budget N` (budget None: the strategy's default)."""
    config = PRUNERS.config_class(strategy)()
    if budget is not None:
        config = replace(config, budget=parse_budget(budget))
    return config


class BasePruner:
    """Budget, stats, slicing and merging; a strategy implements `select(chunk, k)` (and its own state)."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[PrunerConfig]] = PrunerConfig
    vision_layers: tuple[float, ...] = ()
    exact: ClassVar[bool] = True
    """`select` keeps exactly the budget's k tokens; False: the content decides (at most k, or a share)."""

    def __init__(self, config: PrunerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.stats = PruneStats(strategy=self.name, budget=str(self.config.budget))
        self._meter = BudgetMeter(self.config.budget, self.config.fps)

    def admit(self, frames: Sequence[np.ndarray]) -> bool:
        """The pre-encode hook the session calls with a patch's frames: True encodes it (the default)."""
        return True

    def select(self, chunk: VisualChunk, k: int) -> torch.Tensor:
        """Ascending (n_kept,) long indices of the rows to keep; at most `k` of them."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The per-stream state as plain tensors and values (a snapshot); strategies add their own."""
        return {"stats": dataclasses.asdict(self.stats), "credit": self._meter.credit, "floored": self._meter.floored}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        """Continue from a `state_dict`; its tensors go to `device` (where the chunks' embeds live)."""
        load_fields(self.stats, state["stats"])
        self._meter.credit, self._meter.floored = float(state["credit"]), int(state["floored"])

    def reduce(self, chunk: VisualChunk, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(kept rows ascending, their embeds, tokens merged into them): `select`, then the config's `merge`.

        Merging strategies (ToMe, VisionDrop) override this to return their own averaged rows."""
        keep = self.select(chunk, k).to(device=chunk.embeds.device, dtype=torch.long)
        if keep.numel() == chunk.num_tokens or self.config.merge == "none":
            return keep, chunk.embeds[keep], 0
        embeds, merged = merge_dropped(chunk.embeds, keep, self.config.merge, chunk.grid_thw[1:])
        return keep, embeds, merged

    def planned_tokens(self, num_tokens: int, chunks: int) -> list[int] | None:
        """Tokens each of the next `chunks` chunks of `num_tokens` would keep (None: the content decides)."""
        if not self.exact:
            return None
        meter = BudgetMeter(self.config.budget, self.config.fps)
        return [meter.allowance(num_tokens) for _ in range(chunks)]

    def __call__(self, chunk: VisualChunk) -> VisualChunk:
        start = time.perf_counter()
        n = chunk.num_tokens
        k = self._meter.allowance(n, chunk.pts_seconds)
        keep, embeds, merged = self.reduce(chunk, k)
        if keep.numel() == n:
            kept = replace(chunk, kept_index=keep)
        else:
            changed = chunk.changed[keep] if chunk.changed is not None else None
            kept = replace(
                chunk, embeds=embeds, positions=chunk.positions[:, keep], changed=changed, kept_index=keep,
                attention=None, known_last=None,  # the kept rows' highest position is read from them
            )
        s = self.stats
        s.chunks += 1
        s.tokens_in += n
        s.tokens_kept += keep.numel()
        s.tokens_dropped += n - keep.numel()
        s.tokens_merged += merged
        s.chunks_floored = self._meter.floored
        s.seconds += time.perf_counter() - start
        return kept


@register_pruner("none")
class NoPruner(BasePruner):
    """The baseline: every visual token enters the LLM (the budget is ignored)."""

    def __init__(self, config: PrunerConfig | None = None) -> None:
        super().__init__(config)
        self.stats.budget = "1.0"

    def planned_tokens(self, num_tokens: int, chunks: int) -> list[int] | None:
        return [num_tokens] * chunks

    def __call__(self, chunk: VisualChunk) -> VisualChunk:
        n = chunk.num_tokens
        self.stats.chunks += 1
        self.stats.tokens_in += n
        self.stats.tokens_kept += n
        return replace(chunk, kept_index=torch.arange(n, device=chunk.embeds.device))
