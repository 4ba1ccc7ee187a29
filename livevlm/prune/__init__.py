"""Token pruning between the vision encoder and the KV context, with pluggable strategies."""

from .base import NoPruner, Pruner, PruneStats, available_pruners, build_pruner, register_pruner

__all__ = ["NoPruner", "PruneStats", "Pruner", "available_pruners", "build_pruner", "register_pruner"]
