"""The stream's KV context (policies behind `KVStore`) and the ViT feature cache.

KV policies (`KV_POLICIES`): full (baseline, unbounded), sink_window (StreamingVLM-like), retrieval
(ReKV-like), bilevel (Video-XL-2-like), fastv (FastV-style question-time ranking of the stored visual
tokens); retrieval and bilevel keep chunks across device / host / disk tiers (`KVTiers`), sink_window keeps
its window on the device. ViT cache policies (`VIT_CACHES`): none, frame, token; presets none, lossless,
balanced, fast. The KV stores never call the model (the loop runs every LLM forward on the views they give);
the ViT cache runs only the `VisionEncoder` it is handed (the full encode, or its block runner).
"""

from .chunked import SinkWindowKV
from .fastv import FastVConfig, FastVKV
from .kv import (
    KV_POLICIES,
    FullKV,
    KVStore,
    available_kv_policies,
    build_kv_store,
    kv_config,
    kv_config_of,
    register_kv_policy,
)
from .kv_configs import (
    BilevelConfig,
    ChunkedKVStats,
    FullKVConfig,
    KVStats,
    RetrievalConfig,
    SinkWindowConfig,
    parse_bytes,
)
from .select import BilevelKV, RetrievalKV
from .tiers import KVTiers
from .vit_cache import (
    VIT_CACHE_PRESETS,
    VIT_CACHES,
    ViTCacheConfig,
    ViTCacheStats,
    build_feature_cache,
    register_vit_policy,
    resolve_vit_cache,
)

__all__ = [
    "KV_POLICIES",
    "VIT_CACHES",
    "VIT_CACHE_PRESETS",
    "BilevelConfig",
    "BilevelKV",
    "ChunkedKVStats",
    "FastVConfig",
    "FastVKV",
    "FullKV",
    "FullKVConfig",
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
    "kv_config_of",
    "parse_bytes",
    "register_kv_policy",
    "register_vit_policy",
    "resolve_vit_cache",
]
