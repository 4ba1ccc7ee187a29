"""Command-line flags shared by `ask` and `watch`: the compression stages, mapped onto `SessionConfig`."""

from __future__ import annotations

import argparse
from typing import Any


def add_compression_args(parser: argparse.ArgumentParser) -> None:
    """--vit-cache, --prune/--budget and --kv/--kv-budget on a subcommand."""
    from .cache import available_kv_policies
    from .cache.vit_cache import VIT_CACHE_PRESETS
    from .prune import available_pruners

    g = parser.add_argument_group("compression (every stage defaults to its uncompressed baseline)")
    g.add_argument(
        "--vit-cache",
        default="none",
        choices=list(VIT_CACHE_PRESETS),
        help="ViT feature cache preset: reuse encoder work on similar frames (default none)",
    )
    g.add_argument(
        "--prune",
        default="none",
        choices=available_pruners(),
        help="visual token pruning strategy (default none)",
    )
    g.add_argument(
        "--budget",
        default=None,
        help="pruning budget: tokens per frame (64), a ratio (0.25) or tokens per second (32/s)",
    )
    g.add_argument(
        "--kv",
        default="full",
        choices=available_kv_policies(),
        help="KV policy: full (baseline, unbounded), sink_window, retrieval, bilevel",
    )
    g.add_argument(
        "--kv-budget",
        default=None,
        metavar="BYTES",
        help="KV bytes a bounded policy keeps in memory (e.g. 256M, 2G); older chunks spill to disk",
    )


def compression_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `SessionConfig` fields the compression flags set."""
    from .prune import parse_prune_spec

    return {
        "vit_cache": args.vit_cache,
        "prune": parse_prune_spec(args.prune, args.budget),
        "kv": args.kv,
        "kv_budget": args.kv_budget,
    }
