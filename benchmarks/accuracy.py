"""Accuracy retention of every compression setting on the yardstick world's test split.

    python benchmarks/accuracy.py                          # bundled yardstick model, 30 questions per type
    python benchmarks/accuracy.py --per-type 1 --settings baseline,prune:temporal:0.5   # a CI-sized subset
    python benchmarks/accuracy.py --split val --settings prune:dedup:0.5:threshold=0.02  # tune on validation
    python benchmarks/accuracy.py --prune-only --out benchmarks/results/accuracy-pruners.json   # docs/pruners.md

Each setting answers the same test questions through `livevlm.Session` (frames pushed one by one, a fresh
session per question, one loaded model). Reported per setting: accuracy per question type, retention =
accuracy / baseline accuracy, visual tokens kept, context tokens a question attends to, and ViT / prefill /
time-to-first-token seconds, each also as a ratio to the baseline of the same run. Needle questions are
asked after streams of 200-260 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from _machine import BenchParser, cpu_info, provenance, run_cli

import livevlm
from livevlm import SessionConfig, load_model
from livevlm.cache import available_kv_policies, kv_config_of
from livevlm.cache.vit_cache import VIT_CACHE_PRESETS
from livevlm.errors import ConfigError
from livevlm.prune import available_pruners, parse_prune_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ is not installed
from tools.yardstick.evaluate import as_rows, evaluate, summarize
from tools.yardstick.world import QUESTION_TYPES, example_set

RESULTS = Path(__file__).resolve().parent / "results"
PRUNE_BUDGETS = ("0.5", "0.25")


def all_settings() -> list[str]:
    """baseline, every ViT cache preset, every pruner at each budget, every bounded KV policy."""
    out = ["baseline"]
    out += [f"vit:{p}" for p in VIT_CACHE_PRESETS if p != "none"]
    out += [f"prune:{s}:{b}" for s in available_pruners() if s != "none" for b in PRUNE_BUDGETS]
    out += [f"kv:{k}" for k in available_kv_policies() if k != "full"]
    return out


def prune_settings() -> list[str]:
    """baseline and every pruner at each budget (the pruner comparison of docs/pruners.md)."""
    out = ["baseline", *(f"prune:{s}:{b}" for s in available_pruners() if s != "none" for b in PRUNE_BUDGETS)]
    return out + [f"kv:fastv:keep_ratio={b}" for b in PRUNE_BUDGETS]  # FastV prunes at question time


def knob(text: str) -> Any:
    """A knob's value from its text: a number, true/false/none, a comma-free tuple 'a/b/c', or the text."""
    low = text.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    if "/" in text:
        return tuple(knob(t) for t in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def setting_config(name: str) -> SessionConfig:
    """'baseline' | 'vit:PRESET' | 'prune:STRATEGY:BUDGET[:FIELD=VALUE...]' | 'kv:POLICY[:FIELD=VALUE...]'
    -> the session config. Knobs follow, e.g. prune:dedup:0.5:threshold=0.02, kv:fastv:keep_ratio=0.25."""
    try:
        return _setting_config(name)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # an unknown knob (a field the config lacks) or a bad value
        raise ConfigError(str(e)) from None


def _setting_config(name: str) -> SessionConfig:
    kind, _, rest = name.partition(":")
    if kind == "baseline":
        return SessionConfig()
    if kind == "vit":
        return SessionConfig(vit_cache=rest)
    if kind == "prune":
        strategy, _, rest = rest.partition(":")
        budget, *knobs = rest.split(":") if rest else [""]
        config = parse_prune_spec(strategy, budget or None)
        values = dict(_knob_pair(k) for k in knobs)
        return SessionConfig(prune=replace(config, **{k: knob(v) for k, v in values.items()}))
    if kind == "kv":
        policy, *knobs = rest.split(":")
        if not knobs:
            return SessionConfig(kv=policy)
        values = {k: knob(v) for k, v in (_knob_pair(x) for x in knobs)}
        return SessionConfig(kv=replace(kv_config_of(policy), **values))
    raise ConfigError(f"unknown setting {name!r}: use baseline, vit:PRESET, prune:STRATEGY:BUDGET or kv:POLICY")


def _knob_pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq:
        raise ConfigError(f"knob {text!r} is not FIELD=VALUE")
    return key, value


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    adapter = load_model(args.model, dtype=args.dtype)
    types, settings = args.types, args.settings
    examples = example_set(args.per_type, args.split, types)
    report: dict[str, Any] = {
        **provenance(__file__, args, args.argv),
        "model": str(args.model or "bundled yardstick"),
        "per_type": args.per_type,
        "split": args.split,
        "types": types,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cpu": cpu_info()},
        "livevlm": livevlm.__version__,
        "dtype": str(adapter.dtype),
        "settings": {},
    }
    evaluate(adapter, examples[:: max(1, len(examples) // 4)])  # warm-up: the first setting must not pay it
    for name in settings:
        results = evaluate(adapter, examples, setting_config(name), progress=not args.quiet)
        report["settings"][name] = {
            **summarize(results),
            "answers": as_rows(results) if args.answers else None,
        }
    base = report["settings"]["baseline"]
    for entry in report["settings"].values():
        acc, tot, btot = entry["accuracy"], entry["totals"], base["totals"]
        entry["retention"] = {t: ratio(acc[t], base["accuracy"][t]) for t in acc}
        entry["ratios"] = {
            "kept_tokens": ratio(tot["kept_tokens"], btot["kept_tokens"]),
            "context_tokens": ratio(tot["context_tokens"], btot["context_tokens"]),
            "vit_seconds": ratio(tot["vit_seconds"], btot["vit_seconds"]),
            "prefill_seconds": ratio(tot["prefill_seconds"], btot["prefill_seconds"]),
            "ttft_seconds": ratio(tot["ttft_seconds"], btot["ttft_seconds"]),
        }
    return report


def table(report: dict[str, Any]) -> str:
    types = [*report["types"], "overall"]
    head = ["setting", *types, "retention", "kept tok", "ctx tok", "ViT s", "prefill s", "TTFT"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for name, e in report["settings"].items():
        r = e["ratios"]
        cells = [name, *(f"{e['accuracy'].get(t, float('nan')):.2f}" for t in types)]
        cells.append(_fmt(e["retention"]["overall"]))
        cells += [
            _fmt(r[k])
            for k in ("kept_tokens", "context_tokens", "vit_seconds", "prefill_seconds", "ttft_seconds")
        ]
        lines.append(" | ".join(cells))
    return "\n".join(f"| {line} |" for line in lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: the bundled yardstick)")
    parser.add_argument("--per-type", type=int, default=30, help="questions per type (default 30)")
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="yardstick split: choose settings on val, report test once (default test)")
    parser.add_argument("--prune-only", action="store_true",
                        help="default settings: baseline + every pruner at budgets 0.5 and 0.25, fastv at keep 0.5 and 0.25")
    parser.add_argument(
        "--types", default=None, help=f"comma list of {','.join(QUESTION_TYPES)} (default all)"
    )
    parser.add_argument("--settings", default=None, help="comma list (default: every setting; see --list)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: all cores)")
    parser.add_argument("--answers", action="store_true", help="keep every reply in the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.list:
        print("\n".join(prune_settings() if args.prune_only else all_settings()))
        return
    # checked before the model loads: a typo must not surface after the baseline has run
    args.types = args.types.split(",") if args.types else list(QUESTION_TYPES)
    unknown = [t for t in args.types if t not in QUESTION_TYPES]
    if unknown:
        parser.error(f"--types: unknown {', '.join(unknown)}; choose from {', '.join(QUESTION_TYPES)}")
    default = prune_settings() if args.prune_only else all_settings()
    args.settings = args.settings.split(",") if args.settings else default
    if "baseline" not in args.settings:
        args.settings.insert(0, "baseline")
    for name in args.settings:
        try:
            setting_config(name)
        except ConfigError as e:
            parser.error(f"--settings {name}: {e}")
    if args.per_type < 1:
        parser.error("--per-type must be at least 1")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
