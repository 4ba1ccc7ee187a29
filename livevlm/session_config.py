"""`SessionConfig` (what a session loads, samples and compresses) and `SessionStats` (what it has done).

Each compression field takes a registered name or that stage's config dataclass and is validated once,
here: after construction `vit_cache`, `prune` and `kv` hold the resolved configs the session builds from.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any

from .cache import (
    BilevelConfig,
    FullKVConfig,
    KVStats,
    RetrievalConfig,
    SinkWindowConfig,
    ViTCacheConfig,
    ViTCacheStats,
    kv_config,
    kv_config_of,
    resolve_vit_cache,
)
from .errors import ConfigError
from .generate import DECODE_PATHS
from .models import DEFAULT_SYSTEM_PROMPT
from .prune import PrunerConfig, PruneStats, prune_config
from .standing import StandingStats
from .stream.config import MAX_FPS

KVPolicyConfig = FullKVConfig | SinkWindowConfig | RetrievalConfig | BilevelConfig


@dataclass
class SessionConfig:
    """How a session loads its model, samples its stream and compresses what it keeps."""

    model: str | None = None
    """Local path or hub id of a supported checkpoint; None = the bundled default model."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, ..."""
    dtype: str = "auto"
    """auto (the checkpoint's), float32, bfloat16 or float16."""
    fps: float = 2.0
    """Frames per second sampled from files, and the time base of the temporal positions."""
    max_frames: int | None = None
    """Stop ingesting a file after this many sampled frames."""
    max_new_tokens: int = 64
    """Most tokens an answer may have."""
    stop_repeats: int = 3
    """An answer stops when its tail is this many copies in a row of a unit of 1-8 tokens spanning at least 8
    tokens (a loop like 'blueblueblue'); one copy is kept. 0 = off (only the end token and max_new_tokens)."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_pixels: int | None = None
    """Cap on pixels per frame after resizing (None: the checkpoint's video processor config, else 768 x 28 x 28)."""
    min_pixels: int | None = None
    """Floor on pixels per frame after resizing (None: the checkpoint's video processor config, else 128 x 28 x 28)."""
    vit_cache: str | ViTCacheConfig = "none"
    """ViT feature cache: a preset (none, lossless, balanced, fast) or a `ViTCacheConfig`; none = full encode."""
    prune: str | PrunerConfig = "none"
    """Token pruner: a strategy name or its config (`livevlm.prune`); none = keep every token."""
    kv: str | KVPolicyConfig = "full"
    """KV policy: a name or its config (`livevlm.cache`); full = every token kept, unbounded."""
    kv_budget: int | str | None = None
    """Bytes of KV a bounded policy keeps in memory (e.g. 268435456, '256M'; retrieval/bilevel: 1/4 on the
    device, 3/4 in host RAM, older chunks spill to disk); None = the policy config's own tiers."""
    decode: str = "dynamic"
    """How answer tokens after the first run: dynamic (on the growing cache), static (fixed-size buffers; equal
    tokens), graph (static steps replayed as a CUDA graph: CUDA only). Not yet measured on a GPU: opt-in."""
    encode: str = "eager"
    """How dense vision encodes run: eager, or graph (each frame size's encode replayed as a CUDA graph: CUDA
    only; a ViT cache's full encodes and a pan's too). Not yet measured on a GPU: opt-in."""
    prefill: str = "eager"
    """How a chunk's tokens are prefilled at ingestion: eager (the decoder on the store's view), static (on
    fixed-size buffers, a few shapes; the same KV to rounding), graph (static, replayed as a CUDA graph: CUDA
    only). Not yet measured on a GPU: opt-in."""

    def __post_init__(self) -> None:
        _check_types(self)
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ConfigError(f"fps must be a finite number > 0, got {self.fps}")
        if self.fps > MAX_FPS:  # a typo: 1e9 frames a second of video would exhaust memory sampling it
            raise ConfigError(f"fps must be at most {MAX_FPS:g} frames per second, got {self.fps:g}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1 or None, got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.stop_repeats != 0 and self.stop_repeats < 2:
            raise ConfigError(f"stop_repeats must be 0 (off) or >= 2, got {self.stop_repeats}")
        if self.max_pixels is not None and self.max_pixels < 28 * 28:
            raise ConfigError(f"max_pixels must be >= 784, got {self.max_pixels}")
        if self.min_pixels is not None and not 28 * 28 <= self.min_pixels <= (self.max_pixels or 2**62):
            raise ConfigError(f"min_pixels must be in [784, max_pixels], got {self.min_pixels}")
        if self.decode not in DECODE_PATHS:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_PATHS)}, got {self.decode!r}")
        if self.decode == "graph" and not self.device.startswith("cuda"):
            raise ConfigError(f"decode='graph' needs a CUDA device (CUDA graphs), got device {self.device!r}")
        if self.encode not in ENCODE_PATHS:
            raise ConfigError(f"encode must be one of {', '.join(ENCODE_PATHS)}, got {self.encode!r}")
        if self.encode == "graph" and not self.device.startswith("cuda"):
            raise ConfigError(f"encode='graph' needs a CUDA device (CUDA graphs), got device {self.device!r}")
        if self.prefill not in PREFILL_PATHS:
            raise ConfigError(f"prefill must be one of {', '.join(PREFILL_PATHS)}, got {self.prefill!r}")
        if self.prefill == "graph" and not self.device.startswith("cuda"):
            raise ConfigError(f"prefill='graph' needs a CUDA device (CUDA graphs), got device {self.device!r}")
        self.vit_cache = resolve_vit_cache(self.vit_cache)
        if self.vit_cache.recompute == "graph" and not self.device.startswith("cuda"):
            raise ConfigError("ViTCacheConfig.recompute='graph' needs a CUDA device (CUDA graphs), "
                              f"got device {self.device!r}")  # fmt: skip
        prune = prune_config(self.prune)  # an unknown strategy or a bad budget is refused here
        self.prune = replace(prune, fps=self.fps)  # per-second budgets fall back to the stream's rate
        self.kv = kv_config_of(kv_config(self.kv, self.kv_budget))  # unknown policies, budgets for `full`: refused


def as_session_config(config: object) -> SessionConfig:
    """`config`, or the defaults for None; anything else (a dict, a path) is a `ConfigError`."""
    if config is None:
        return SessionConfig()
    if not isinstance(config, SessionConfig):
        raise ConfigError(f"config must be a SessionConfig (or None for the defaults), got {type(config).__name__}; "
                          "e.g. SessionConfig(**options) for a dict")  # fmt: skip
    return config


DTYPES = ("auto", "float32", "bfloat16", "float16")
ENCODE_PATHS = ("eager", "graph")
PREFILL_PATHS = ("eager", "static", "graph")
_INTEGERS = ("max_frames", "max_new_tokens", "stop_repeats", "max_pixels", "min_pixels")
_OPTIONAL = ("max_frames", "max_pixels", "min_pixels")


def _check_types(config: SessionConfig) -> None:
    """A `ConfigError` naming the field for a value of the wrong type (a string fps, a fractional max_frames)."""
    def is_int(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not isinstance(config.fps, numbers.Real) or isinstance(config.fps, bool):
        raise ConfigError(f"fps must be a number, got {type(config.fps).__name__} {config.fps!r}")
    for name in _INTEGERS:
        value = getattr(config, name)
        if not (is_int(value) or (value is None and name in _OPTIONAL)):
            raise ConfigError(f"{name} must be an integer{' or None' if name in _OPTIONAL else ''}, got {value!r}")
    for name in ("device", "dtype", "system_prompt", "decode", "encode", "prefill"):
        if not isinstance(getattr(config, name), str):
            raise ConfigError(f"{name} must be a string, got {getattr(config, name)!r}")


@dataclass
class StageSeconds:
    """Wall time spent per stage since the session started: on a GPU, the host's time to queue the stage's work
    (ingestion does not wait for the device; `benchmarks/gpu.py` times the GPU's share with CUDA events)."""

    vit: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0


@dataclass
class SessionStats:
    """What the loop has done so far; each compression stage adds its own record."""

    frames_seen: int = 0
    frames_rejected: int = 0
    chunks: int = 0
    pending_frames: int = 0
    """Frames accepted but not yet a chunk (a half-filled temporal patch): an answer reads them in its own prefill."""
    visual_tokens: int = 0
    """Visual tokens the encoder produced (before pruning)."""
    kv_tokens: int = 0
    kv_bytes: int = 0
    questions: int = 0
    answer_tokens: int = 0
    """Tokens decoded for answers (a loop's trimmed copies included)."""
    answers_cut_by_deadline: int = 0
    """Answers that stopped at their `deadline_s` with what they had."""
    answers_stopped_repeating: int = 0
    """Answers stopped on a loop (`SessionConfig.stop_repeats`), their repeated copies trimmed."""
    encodes_by_path: dict[str, int] = field(default_factory=dict)
    """encode='graph': dense vision encodes per path, graph, "eager: the graph capture failed, ..." or "eager:
    the pruner reads the tower's attention" (hiprune) (a ViT cache's full encodes and pans included; its partial
    passes are in `vit_cache.recompute`). Empty otherwise."""
    prefills_by_path: dict[str, int] = field(default_factory=dict)
    """prefill='static' / 'graph': chunks prefilled per path, the one asked for, "static: the graph capture
    failed, ..." or "eager: no ... prefill, <why>" (the model cannot). Empty for eager prefills."""
    answers_by_decode: dict[str, int] = field(default_factory=dict)
    """Answers per decode path taken (`SessionConfig.decode`; "dynamic: ..." says why a fixed-shape one was not,
    "static: the graph capture failed, ..." why a graph decode ran its fixed steps eagerly)."""
    first_pts_seconds: float | None = None
    """Stream time of the first frame accepted."""
    last_pts_seconds: float | None = None
    """Stream time of the latest frame accepted."""
    seconds: StageSeconds = field(default_factory=StageSeconds)
    prune: PruneStats = field(default_factory=PruneStats)
    vit_cache: ViTCacheStats | None = None
    """The feature cache's stats record (None when the cache is off)."""
    kv: KVStats = field(default_factory=KVStats)
    """The KV policy's stats record (tokens, bytes, and what the policy adds)."""
    stream: Any = None
    """The watched source's `IngestStats` (frames in, dropped, corrupt, reconnects, gaps); None if not watching."""
    kernels: dict[str, str] = field(default_factory=dict)
    """Backend each low-level op runs on, with the reason (e.g. linear: "onednn: ...")."""
    standing: StandingStats = field(default_factory=StandingStats)
    """The standing queries (`Session.watch_for`): active now, started, runs, changes, errors, seconds."""
