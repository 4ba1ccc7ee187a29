"""Token pruning between the vision encoder and the KV context, with pluggable strategies.

    SessionConfig(prune="dual_anchor")                                   # a name: the default budget (0.25)
    SessionConfig(prune=parse_prune_spec("temporal", "64"))              # as the CLI's --prune/--budget
    SessionConfig(prune=TemporalConfig(budget="32/s", threshold=0.95))   # every knob

Strategies (docs/pruners.md: each with its paper and measured retention):
    none, uniform, temporal (EVS-like), adaptive (VidCom2-like)
    stc (STC-Pruner), dual_anchor (STC-Pruner's anchors with cosine distance: the simpler variant)
    tome (ToMe merging), visiondrop (VisionDrop), cluster (CenterCLIP-style k-medoids)
    keyframe (KFFocus-style per-chunk budgets), dedup (B-VLLM-style: near-duplicate patches refused before
    the ViT through `admit`), hiprune (HiPrune: the vision tower's own attention, in `chunk.attention`)
FastV (query-aware, at question time) is a KV policy: `livevlm.cache.FastVConfig`, kv="fastv".
Kept tokens keep their original (t, h, w) positions; `chunk.kept_index` says which rows were kept.
"""

from .adaptive import AdaptiveConfig, AdaptivePruner
from .base import (
    PRUNERS,
    BasePruner,
    NoPruner,
    Pruner,
    PruneStats,
    available_pruners,
    build_pruner,
    parse_prune_spec,
    prune_config,
    register_pruner,
)
from .cluster import ClusterConfig, ClusterPruner
from .config import DEFAULT_BUDGET, Budget, PrunerConfig, parse_budget
from .dedup import DedupConfig, DedupPruner
from .dual_anchor import DualAnchorConfig, DualAnchorPruner
from .hiprune import HiPruneConfig, HiPrunePruner
from .keyframe import KeyframeConfig, KeyframePruner
from .stc import STCConfig, STCPruner
from .temporal import TemporalConfig, TemporalPruner
from .tome import ToMeConfig, ToMePruner
from .uniform import UniformConfig, UniformPruner
from .visiondrop import VisionDropConfig, VisionDropPruner

__all__ = [
    "DEFAULT_BUDGET",
    "PRUNERS",
    "AdaptiveConfig",
    "AdaptivePruner",
    "BasePruner",
    "Budget",
    "ClusterConfig",
    "ClusterPruner",
    "DedupConfig",
    "DedupPruner",
    "DualAnchorConfig",
    "DualAnchorPruner",
    "HiPruneConfig",
    "HiPrunePruner",
    "KeyframeConfig",
    "KeyframePruner",
    "NoPruner",
    "PruneStats",
    "Pruner",
    "PrunerConfig",
    "STCConfig",
    "STCPruner",
    "TemporalConfig",
    "TemporalPruner",
    "ToMeConfig",
    "ToMePruner",
    "UniformConfig",
    "UniformPruner",
    "VisionDropConfig",
    "VisionDropPruner",
    "available_pruners",
    "build_pruner",
    "parse_budget",
    "parse_prune_spec",
    "prune_config",
    "register_pruner",
]
