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
from .vit_cache import (
    VIT_CACHE_PRESETS,
    ViTCacheConfig,
    ViTCacheStats,
    build_feature_cache,
    register_vit_policy,
)

__all__ = [
    "VIT_CACHE_PRESETS",
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
    "ViTCacheConfig",
    "ViTCacheStats",
    "available_kv_policies",
    "build_feature_cache",
    "build_kv_store",
    "kv_config",
    "parse_bytes",
    "register_kv_policy",
    "register_vit_policy",
]
