"""Command-line flags of the session, generated once from `SessionConfig` for every subcommand.

Each flag's name, default and help come from the `SessionConfig` field it sets (its docstring is the help);
choices come from the registries. `session_config(args)` maps parsed flags back onto a `SessionConfig`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
from typing import Any

from ..cache import KV_POLICIES, VIT_CACHE_PRESETS, ViTCacheConfig, parse_bytes
from ..cache.vit_cache import RECOMPUTE_PATHS
from ..generate import DECODE_PATHS
from ..prune import PRUNERS, parse_prune_spec
from ..session import SessionConfig
from ..session_config import ENCODE_PATHS, PREFILL_PATHS

DTYPES = ("auto", "float32", "bfloat16", "float16")

SESSION_FLAGS: dict[str, dict[str, Any]] = {
    "model": {"metavar": "PATH_OR_ID", "type": str},
    "device": {},
    "dtype": {"choices": DTYPES},
    "fps": {},
    "max_new_tokens": {},
    "decode": {"choices": DECODE_PATHS},
    "encode": {"choices": ENCODE_PATHS},
    "prefill": {"choices": PREFILL_PATHS},
}
"""`SessionConfig` fields every subcommand takes -> argparse extras (type, default, help: from the field)."""

COMPRESSION_FLAGS: dict[str, dict[str, Any]] = {
    "vit_cache": {"choices": list(VIT_CACHE_PRESETS)},
    "prune": {"choices": PRUNERS.names()},
    "kv": {"choices": KV_POLICIES.names()},
    "kv_budget": {"metavar": "BYTES", "type": str},
}
"""The compression stages' fields (every stage defaults to its uncompressed baseline)."""

EXTRA_FLAGS: dict[str, dict[str, Any]] = {
    "budget": {
        "default": None,
        "help": "pruning budget: tokens per frame (64), a ratio (0.25) or tokens per second (32/s); "
        "needs --prune",
    },
    "vit_recompute": {
        "default": None,
        "choices": RECOMPUTE_PATHS,
        "help": "how the token ViT cache's partial passes run: dynamic (the rows that moved), static (the budget's "
        "rows always: fixed shapes, the same features), graph (static, replayed as a CUDA graph; CUDA only); "
        "needs --vit-cache balanced or fast; default: dynamic",
    },
    "kv_disk_budget": {
        "default": None,
        "metavar": "BYTES",
        "help": "cap on the KV spill file of retrieval/bilevel (e.g. 4G); past it the oldest chunks' KV is "
        "dropped and only their summary stays; default: no cap",
    },
}
"""Flags that refine a field's config rather than set a field: --budget (prune), --vit-recompute (vit_cache),
--kv-disk-budget (kv)."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field), as one line each."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if documented and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _add(group: Any, name: str, extra: dict[str, Any], override: tuple[Any, str] | None = None) -> None:
    field = {f.name: f for f in dataclasses.fields(SessionConfig)}[name]
    default, help_text = override or (field.default, field_docs(SessionConfig).get(name, ""))
    if default is not None and "default" not in help_text.lower():
        help_text += " (default: %(default)s)"
    kwargs: dict[str, Any] = {"default": default, "help": help_text}
    if default is not None and not isinstance(default, str):
        kwargs["type"] = type(default)
    kwargs.update(extra)
    group.add_argument("--" + name.replace("_", "-"), **kwargs)


def add_session_args(
    parser: argparse.ArgumentParser, defaults: dict[str, tuple[Any, str]] | None = None
) -> None:
    """The model, device and compression flags, as one set for ask, watch and any later subcommand.

    `defaults`: field -> (default, help) where a subcommand's default differs from `SessionConfig`'s."""
    defaults = defaults or {}
    unknown = set(defaults) - set(SESSION_FLAGS) - set(COMPRESSION_FLAGS)
    if unknown:
        raise ValueError(f"no session flag for {sorted(unknown)}")
    for name, extra in SESSION_FLAGS.items():
        _add(parser, name, extra, defaults.get(name))
    changed = [f"--{n.replace('_', '-')} {defaults[n][0]}" for n in COMPRESSION_FLAGS if n in defaults]
    title = "compression (every stage defaults to its uncompressed baseline"
    g = parser.add_argument_group(title + (f" but {', '.join(changed)})" if changed else ")"))
    for name, extra in COMPRESSION_FLAGS.items():
        _add(g, name, extra, defaults.get(name))
    for name, extra in EXTRA_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), **extra)


def session_config(args: argparse.Namespace, **fields: Any) -> SessionConfig:
    """The `SessionConfig` the parsed flags describe (plus `fields` a subcommand sets itself)."""
    from ..errors import ConfigError

    values = {name: getattr(args, name) for name in (*SESSION_FLAGS, *COMPRESSION_FLAGS)}
    if args.budget is not None and args.prune == "none":
        raise ConfigError("--budget sets the pruning budget and needs --prune STRATEGY (e.g. --prune temporal)")
    values["prune"] = parse_prune_spec(args.prune, args.budget)
    if args.vit_recompute is not None:
        if ViTCacheConfig(args.vit_cache).policy != "token":
            raise ConfigError("--vit-recompute shapes the token ViT cache's partial passes and needs "
                              f"--vit-cache balanced or fast (got --vit-cache {args.vit_cache})")  # fmt: skip
        values["vit_cache"] = ViTCacheConfig(args.vit_cache, recompute=args.vit_recompute)
    config = SessionConfig(**values, **fields)
    if args.kv_disk_budget is not None:
        if not hasattr(config.kv, "tiers") or config.kv.policy == "sink_window":
            raise ConfigError("--kv-disk-budget caps the spill file of --kv retrieval or bilevel")
        tiers = dataclasses.replace(config.kv.tiers, disk_bytes=parse_bytes(args.kv_disk_budget))
        config = dataclasses.replace(config, kv=dataclasses.replace(config.kv, tiers=tiers))
    return config
