"""The pruner protocol, its stats record and the strategy registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
from ..models.base import VisualChunk


@dataclass
class PruneStats:
    """Visual tokens that reached the pruner and how many it let through."""

    chunks: int = 0
    tokens_in: int = 0
    tokens_kept: int = 0

    @property
    def kept_ratio(self) -> float:
        return self.tokens_kept / self.tokens_in if self.tokens_in else 1.0


class Pruner(Protocol):
    """Takes one encoded chunk and returns the chunk with only the kept tokens (original positions)."""

    name: str
    stats: PruneStats

    def __call__(self, chunk: VisualChunk) -> VisualChunk: ...


_PRUNERS: dict[str, Callable[..., Pruner]] = {}


def register_pruner(name: str) -> Callable[[Callable[..., Pruner]], Callable[..., Pruner]]:
    """Class decorator: make a strategy available as `name` in configs and on the CLI."""

    def deco(cls: Callable[..., Pruner]) -> Callable[..., Pruner]:
        _PRUNERS[name] = cls
        return cls

    return deco


def available_pruners() -> list[str]:
    return sorted(_PRUNERS)


def build_pruner(spec: Any = "none") -> Pruner:
    """A fresh pruner (strategies keep per-stream state) from a strategy name."""
    name = spec if isinstance(spec, str) else getattr(spec, "strategy", None)
    if name not in _PRUNERS:
        raise ConfigError(f"unknown pruner {name!r}; choose one of {', '.join(available_pruners())}")
    return _PRUNERS[name]() if isinstance(spec, str) else _PRUNERS[name](spec)


@register_pruner("none")
class NoPruner:
    """The baseline: every visual token enters the LLM."""

    name = "none"

    def __init__(self, config: Any = None) -> None:
        self.stats = PruneStats()

    def __call__(self, chunk: VisualChunk) -> VisualChunk:
        self.stats.chunks += 1
        self.stats.tokens_in += chunk.num_tokens
        self.stats.tokens_kept += chunk.num_tokens
        return chunk
