"""Caches: the stream's KV context (policies behind `KVStore`) and the ViT feature cache."""

from .kv import FullKV, KVStats, KVStore, available_kv_policies, build_kv_store, register_kv_policy

__all__ = ["FullKV", "KVStats", "KVStore", "available_kv_policies", "build_kv_store", "register_kv_policy"]
