"""Caches: the stream's KV context (policies behind `KVStore`) and the ViT feature cache.

KV policies: full (baseline, unbounded), sink_window (StreamingVLM-like), retrieval (ReKV-like),
bilevel (Video-XL-2-like); the last three keep chunks across device / host / disk tiers (`KVTiers`).
"""

from .chunked import SinkWindowKV
from .kv import FullKV, KVStats, KVStore, available_kv_policies, build_kv_store, register_kv_policy
from .kv_configs import (
    BilevelConfig,
    ChunkedKVStats,
    RetrievalConfig,
    SinkWindowConfig,
    kv_config,
    parse_bytes,
)
from .select import BilevelKV, RetrievalKV
from .tiers import KVTiers

__all__ = [
    "BilevelConfig",
    "BilevelKV",
    "ChunkedKVStats",
    "FullKV",
    "KVStats",
    "KVStore",
    "KVTiers",
    "RetrievalConfig",
    "RetrievalKV",
    "SinkWindowConfig",
    "SinkWindowKV",
    "available_kv_policies",
    "build_kv_store",
    "kv_config",
    "parse_bytes",
    "register_kv_policy",
]
