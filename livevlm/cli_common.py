"""Command-line flags shared by `ask` and `watch`: the compression stages, mapped onto `SessionConfig`."""

from __future__ import annotations

import argparse
from typing import Any


def add_compression_args(parser: argparse.ArgumentParser) -> None:
    """--kv / --kv-budget (and the other stages' flags) on a subcommand."""
    from .cache import available_kv_policies

    g = parser.add_argument_group("compression")
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
    return {"kv": args.kv, "kv_budget": args.kv_budget}
