"""ViT feature cache: per-stream reuse of vision-encoder work on temporally similar frames.

    SessionConfig.vit_cache ─► build_feature_cache(config, the model's vision encoder) ─► a per-stream cache
    Session._encode ─► cache.encode(pixels, grid) ─► (embeds (M, D), changed (M,) bool | None)

The cache wraps the `VisionEncoder` it was given (the model's full encode and, for `token`, its block
runner) and calls nothing else. Policies (`VIT_CACHES` registry):
  none   the model's own full encode every chunk (the baseline)
  frame  reuse a whole chunk's features when no patch moved more than `threshold` (0: bit-identical only;
         exact then) — model-agnostic, needs only the encoder's full encode
  token  partial recompute inside the ViT (`livevlm.cache._token_cache`): per block, only tokens whose
         input moved are recomputed; full refresh on age, drift and scene cuts; on a pan (scene cuts in a
         row) it backs off to the model's own encode for a few chunks, so it never costs more than `none`

Presets bundle a policy with its knobs: none, lossless (exact), balanced, fast.
All state lives in the object `build_feature_cache` returns: two sessions on one model never share any.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import ConfigError
from ..records import VisionEncoder, load_fields
from ..registry import Registry

PRESETS: dict[str, dict[str, Any]] = {
    "none": {"policy": "none"},
    "lossless": {"policy": "frame", "threshold": 0.0},
    "balanced": {"policy": "token", "threshold": 0.3, "budget": 0.6, "max_age": 8, "drift_limit": 0.9},
    "fast": {"policy": "token", "threshold": 0.5, "budget": 0.4, "max_age": 16, "drift_limit": 0.6},
}
VIT_CACHE_PRESETS = tuple(PRESETS)
_DEFAULTS: dict[str, Any] = {
    "policy": "none",
    "threshold": 0.0,
    "budget": 1.0,
    "max_age": 0,
    "drift_limit": 1.0,
    "cut_change": 0.8,
    "cut_fraction": 0.5,
    "pan_fraction": 0.9,
    "backoff": 1,
    "backoff_max": 8,
    "recompute": "dynamic",
}
RECOMPUTE_PATHS = ("dynamic", "static", "graph")


@dataclass
class ViTCacheConfig:
    """How a stream's ViT feature cache reuses work. Knobs left None take the preset's value."""

    preset: str = "balanced"
    """Named defaults: none, lossless, balanced, fast."""
    policy: str | None = None
    """Registered reuse policy: none (full encode), frame (whole-chunk reuse), token (partial recompute)."""
    threshold: float | None = None
    """token: a token is recomputed in a block when its input moved more than this since it was last
    computed there (L2 norm of the change / L2 norm of that input). frame: a chunk is reused when no patch's
    mean |pixel change| (normalized units) exceeds this. 0 = only bit-identical input is reused."""
    budget: float | None = None
    """token: at most this fraction of tokens is recomputed per block (the largest changes first)."""
    max_age: int | None = None
    """token: full encode (refresh) once this many chunks passed since the last one; 0 = never by age."""
    drift_limit: float | None = None
    """token: refresh once more than this fraction of tokens moved over `threshold` since the last refresh."""
    cut_change: float | None = None
    """token: a token counts as cut when its patch embedding moved more than this (relative) at once."""
    cut_fraction: float | None = None
    """token: a scene cut (refresh) when more than this fraction of tokens is cut in one chunk."""
    pan_fraction: float | None = None
    """token: a chunk is busy (nearly everything changed) when it is a scene cut or more than this fraction of
    its patch embeddings moved over `threshold` since the last chunk; two busy chunks in a row are a pan."""
    backoff: int | None = None
    """token: on a pan, encode that chunk and this many more dense (the model's own encode, no detection), so
    a pan costs no more than no cache at all; 0 = never back off."""
    backoff_max: int | None = None
    """token: the backoff doubles each time the probe after it is busy again, up to this many chunks; it resets
    to `backoff` once a detection finds a chunk that is not busy."""
    recompute: str | None = None
    """token: how a partial pass runs: dynamic (exactly the rows over `threshold`), static (always the
    `budget` share of rows, the ones not over it computed and dropped: fixed shapes, the same features),
    graph (static, replayed as a CUDA graph: CUDA only). Not yet measured on a GPU: opt-in."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown ViT cache preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        base = {**_DEFAULTS, **PRESETS[self.preset]}
        for f in fields(self):
            if f.name != "preset" and getattr(self, f.name) is None:
                setattr(self, f.name, base[f.name])
        VIT_CACHES.get(self.policy)  # an unknown policy raises, listing the registered ones
        for name in ("threshold", "cut_change"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"ViTCacheConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("budget", "drift_limit", "cut_fraction", "pan_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"ViTCacheConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_age", "backoff", "backoff_max"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ConfigError(f"ViTCacheConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.recompute not in RECOMPUTE_PATHS:
            raise ConfigError(
                f"ViTCacheConfig.recompute must be one of {', '.join(RECOMPUTE_PATHS)}, got {self.recompute!r}"
            )
        if self.recompute != "dynamic" and self.policy != "token":
            raise ConfigError(
                f"ViTCacheConfig.recompute={self.recompute!r} shapes the token policy's partial passes; "
                f"policy {self.policy!r} has none (use recompute='dynamic' or policy='token')"
            )
        if self.backoff_max < self.backoff:
            raise ConfigError(
                f"ViTCacheConfig.backoff_max ({self.backoff_max}) must be >= backoff ({self.backoff})"
            )


@dataclass
class ViTCacheStats:
    """What the feature cache did so far (chunk = one temporal patch of frames)."""

    policy: str = ""
    chunks: int = 0
    full_encodes: int = 0
    """Chunks encoded in full (the first one, refreshes and scene cuts included)."""
    refreshes: int = 0
    """Full encodes forced after the first: age, drift, scene cut or a new frame size."""
    scene_cuts: int = 0
    pans: int = 0
    """Busy chunks right after a busy chunk (nearly everything moved): each starts or extends a backoff."""
    chunks_backoff: int = 0
    """Chunks encoded dense by backoff, with no change detection (counted in `full_encodes` too)."""
    chunks_reused: int = 0
    """Chunks whose features were reused entirely (nothing recomputed)."""
    chunks_partial: int = 0
    """Chunks where only some tokens were recomputed."""
    tokens: int = 0
    """Token-block slots seen: patch tokens x blocks (frame policy: patch tokens)."""
    tokens_recomputed: int = 0
    """Of those, the ones actually computed."""
    recomputed_per_layer: tuple[int, ...] = ()
    """Tokens recomputed in each block, summed over chunks (token policy)."""
    last_recomputed_per_layer: tuple[int, ...] = ()
    """Tokens recomputed in each block for the last chunk (token policy)."""
    last_event: str = ""
    """What the last chunk did: full:<why> (start, grid, cut, age, drift, changed, pan, backoff, resume),
    reuse or partial."""
    seconds: float = 0.0
    """Wall time inside the cache's encode, summed."""
    last_seconds: float = 0.0
    recompute: str = ""
    """token: the path partial passes take (`ViTCacheConfig.recompute`): dynamic, static or graph; "static: the
    graph capture failed, <why>" when a capture failed and the fixed passes run eagerly from then on."""
    tokens_padded: int = 0
    """token, static / graph: token-block rows computed and dropped to keep the shapes fixed (not in
    `tokens_recomputed`, which counts the rows whose result is kept)."""

    @property
    def recompute_fraction(self) -> float:
        """Share of token-block work done (1.0 = a full encode every chunk)."""
        return self.tokens_recomputed / self.tokens if self.tokens else 1.0


class FeatureCacheBase:
    """Shared by the policies: the encoder, the stats record and timing; subclasses implement `_encode`."""

    def __init__(self, config: ViTCacheConfig, encoder: VisionEncoder) -> None:
        self.config = config
        self.encoder = encoder
        self.stats = ViTCacheStats(policy=str(config.policy))

    def encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One temporal patch (HF-layout patches, grid (1, gh, gw)) -> (merged embeds, changed mask | None)."""
        start = time.perf_counter()
        with torch.inference_mode():
            embeds, changed = self._encode(pixels, (int(grid[0]), int(grid[1]), int(grid[2])))
        seconds = time.perf_counter() - start
        s = self.stats
        s.chunks += 1
        s.seconds += seconds
        s.last_seconds = seconds
        return embeds, changed

    def _encode(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The reference state as plain tensors and values (subclasses add theirs to the stats)."""
        return {"stats": dataclasses.asdict(self.stats)}

    def load_state(self, state: dict[str, Any], device: torch.device | str) -> None:
        """Replace the reference state with what `state_dict` returned; its tensors go to `device` (the
        encoder's)."""
        load_fields(self.stats, state["stats"])


def to_device(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return t.to(device) if t is not None else None


VIT_CACHES: Registry = Registry("ViT cache policy")
"""Reuse policies: name -> class built as `cls(config, encoder)`; "none" builds nothing (full encode)."""
VIT_CACHES.register("none", lambda config, encoder: None, config=ViTCacheConfig)
VIT_CACHES.register("frame", "livevlm.cache._frame_cache:FrameReuseCache", config=ViTCacheConfig)
VIT_CACHES.register("token", "livevlm.cache._token_cache:TokenRecomputeCache", config=ViTCacheConfig)


def register_vit_policy(name: str, target: Any) -> None:
    """Register a policy class (or "module:attr"), built as `cls(config, encoder)`."""
    VIT_CACHES.register(name, target, config=ViTCacheConfig)


def resolve_vit_cache(spec: Any) -> ViTCacheConfig:
    """A `ViTCacheConfig` from a preset name or a config (any object with `.preset` and the same knobs)."""
    if isinstance(spec, ViTCacheConfig):
        return spec
    if isinstance(spec, str):
        return ViTCacheConfig(preset=spec)
    if spec is None:
        return ViTCacheConfig(preset="none")
    preset = getattr(spec, "preset", None)
    if not isinstance(preset, str):
        raise ConfigError(f"vit_cache must be a preset name or a ViTCacheConfig, got {spec!r}")
    knobs = {f.name: getattr(spec, f.name) for f in fields(ViTCacheConfig) if hasattr(spec, f.name)}
    return ViTCacheConfig(**knobs)


def build_feature_cache(spec: Any, encoder: VisionEncoder) -> Any | None:
    """The per-stream feature cache for `spec` (a preset name or a config) around `encoder`, or None for
    the plain full encode. It has `encode(pixels, grid) -> (embeds (N, D), changed (N,) bool | None)` and a
    dataclass `stats`."""
    config = resolve_vit_cache(spec)
    return VIT_CACHES.load(config.policy)(config, encoder)
