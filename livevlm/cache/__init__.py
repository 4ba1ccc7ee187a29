"""Caches: the stream's KV context (and, later, the ViT feature cache)."""

from .kv import KVStats, StreamKV

__all__ = ["KVStats", "StreamKV"]
