"""ViT feature cache: per-stream reuse of vision-encoder work on temporally similar frames.

Only the `none` policy (always a full encode, the baseline) exists so far.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

VIT_CACHE_PRESETS = ("none",)


def build_feature_cache(spec: Any, adapter: Any) -> Any | None:
    """The per-stream feature cache for `spec` (a preset name), or None for a full encode every time.

    A feature cache has `encode(adapter, pixels, grid) -> (embeds (N, D), changed (N,) bool | None)` and a
    dataclass `stats`; the adapter calls it in place of the model's full vision encode.
    """
    name = spec if isinstance(spec, str) else getattr(spec, "preset", None)
    if name == "none":
        return None
    raise ConfigError(f"unknown ViT cache preset {name!r}; choose one of {', '.join(VIT_CACHE_PRESETS)}")
