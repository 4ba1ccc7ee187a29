"""How a yardstick model does beyond the clips and wordings it was trained on: the v2 world's gap measure.

    python benchmarks/yardstick_v2_gap.py                    # bundled model, validation split, 30 per type
    python benchmarks/yardstick_v2_gap.py --model DIR --per-type 10 --out /tmp/gap.json

Every condition answers through `livevlm.Session` (tools.yardstick.evaluate, as benchmarks/accuracy.py does),
uncompressed. Conditions: v1 clips in the v1 wording (the baseline), in seen v2 wordings, in held-out wordings and
in fresh wordings (benchmarks/_fresh_wordings.py: written after the composed training wordings, to report; the
same clips each time: paired); v2 clips (varied renders, pushed at their source frame rate and sampled to
2 fps) in the v1 wording and in seen wordings, with the describe type; with `--background-clips` or
`--background-bank` also v2 clips played over that real footage (every clip, the split's own part of it), in seen
wordings. Validation split by default: the test split is scored once, for the retrained model's final figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, run_cli

import livevlm
from livevlm import SessionConfig, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ is not installed
from _fresh_wordings import fresh_template, freshen  # after the root: it reads tools.yardstick

from tools.yardstick.clips import open_bank
from tools.yardstick.evaluate import as_rows, evaluate, summarize
from tools.yardstick.phrasing import parse
from tools.yardstick.world import QUESTION_TYPES, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2

RESULTS = Path(__file__).resolve().parent / "results"
CONDITIONS: dict[str, dict[str, Any]] = {
    "v1 clips, v1 wording": {"version": 1},
    "v1 clips, seen wordings": {"version": 1, "phrasing": "seen"},
    "v1 clips, held-out wordings": {"version": 1, "phrasing": "held_out"},
    "v1 clips, fresh wordings": {"version": 1, "fresh": True},
    "v2 clips, v1 wording": {"version": 2, "phrasing": "canonical", "source_frames": True},
    "v2 clips, seen wordings": {"version": 2, "phrasing": "seen", "source_frames": True},
}
BASELINE = "v1 clips, v1 wording"
"""The condition every other is reported against (`vs_baseline`): the v1 model's own clips and wording."""
FOOTAGE = "v2 clips over real footage, seen wordings"
"""The condition added when clips are given: the same as "v2 clips, seen wordings", every clip over footage."""


def by_template(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per question wording (template), over the rows that used it."""
    hits: dict[str, list[bool]] = {}
    for row in rows:
        template = fresh_template(row["question"]) or parse(row["question"]).template
        hits.setdefault(template, []).append(row["correct"])
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    adapter = load_model(args.model, dtype=args.dtype)
    report: dict[str, Any] = {
        **provenance(__file__, args, args.argv),
        "model": str(args.model or "bundled yardstick"),
        "split": args.split,
        "per_type": args.per_type,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cpu": cpu_info(),
        },
        "livevlm": livevlm.__version__,
        "dtype": str(adapter.dtype),
        "conditions": {},
    }
    bank = open_bank(args.background_clips, 1.0, args.background_bank)
    conditions = args.conditions or [*CONDITIONS, *([FOOTAGE] if bank else [])]
    report["footage"] = None if bank is None else {"digest": bank.digest(), "clips": sorted(
        {r.path for ranges in bank.ranges.values() for r in ranges})}  # fmt: skip
    for name in conditions:
        kw = CONDITIONS[name] if name != FOOTAGE else {**CONDITIONS["v2 clips, seen wordings"], "clips": bank}
        types = QUESTION_TYPES_V2 if kw["version"] == 2 else QUESTION_TYPES
        made = {k: v for k, v in kw.items() if k != "fresh"}
        examples = [make_example(args.split, i, t, **made) for t in types for i in range(args.per_type)]
        if kw.get("fresh"):  # the same clips and answers, asked as a new user would (benchmarks/_fresh_wordings.py)
            examples = [replace(ex, question=freshen(ex.question, i)) for i, ex in enumerate(examples)]
        kw = {k: v for k, v in kw.items() if k != "clips"}
        start = time.perf_counter()
        results = evaluate(adapter, examples, SessionConfig(), progress=not args.quiet)
        rows = as_rows(results)
        report["conditions"][name] = {
            "world": kw,
            **summarize(results),
            "by_wording": by_template(rows),
            "seconds": time.perf_counter() - start,
            "answers": rows if args.answers else None,
        }
        done = report["conditions"][name]
        print(f"{name}: overall {done['accuracy']['overall']:.2f} ({done['seconds']:.0f} s)", flush=True)
    base = report["conditions"].get(BASELINE)
    for entry in report["conditions"].values():  # each condition's accuracy over the baseline's, per shared type
        entry["vs_baseline"] = None if base is None else _vs(entry["accuracy"], base["accuracy"])
    return report


def _vs(acc: dict[str, float], base: dict[str, float]) -> dict[str, float | None]:
    """`acc` over `base` per type both have; "overall" over the types both asked alone (the mean of their
    accuracies), so a type only one condition asks (v2's describe) does not move the headline."""
    shared = [t for t in acc if t in base and t != "overall"]
    out: dict[str, float | None] = {t: acc[t] / base[t] if base[t] else None for t in shared}
    mean_base = sum(base[t] for t in shared) / len(shared) if shared else 0.0
    out["overall"] = (sum(acc[t] for t in shared) / len(shared)) / mean_base if mean_base else None
    return out


def print_table(report: dict[str, Any]) -> None:
    """Accuracy per type and condition; `x base`: the mean accuracy over the types both asked, over the baseline
    condition's (same run)."""
    types = list(dict.fromkeys(t for e in report["conditions"].values() for t in e["accuracy"] if t != "overall"))
    head = ["condition", *types, "overall", "x base"]
    lines = [head, ["---"] * len(head)]
    for name, e in report["conditions"].items():
        acc, ratio = e["accuracy"], (e["vs_baseline"] or {}).get("overall")
        lines.append([name, *(f"{acc[t]:.2f}" if t in acc else "-" for t in [*types, "overall"]),
                      "-" if ratio is None else f"{ratio:.2f}"])  # fmt: skip
    print("\n".join("| " + " | ".join(line) + " |" for line in lines))


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: the bundled yardstick)")
    parser.add_argument(
        "--per-type", type=int, default=30, help="questions per type and condition (default 30)"
    )
    parser.add_argument(
        "--split", default="val", choices=["val", "test"], help="default val (test: once, at the end)"
    )
    parser.add_argument(
        "--conditions", default=None, help=f"';'-separated subset of: {'; '.join([*CONDITIONS, FOOTAGE])}"
    )
    parser.add_argument("--background-clips", default="", help="clips (files or folders, comma-separated): adds "
                        "the footage condition")
    parser.add_argument("--background-bank", default="", help="a bank written by `python -m tools.yardstick.clips "
                        "--write-bank` (instead of decoding --background-clips)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: all cores)")
    parser.add_argument("--answers", action="store_true", help="keep every reply in the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "yardstick-v2-gap.json")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.conditions:  # checked before the model loads and the clips decode
        args.conditions = [c.strip() for c in args.conditions.split(";") if c.strip()]
        unknown = [c for c in args.conditions if c not in (*CONDITIONS, FOOTAGE)]
        if unknown:
            parser.error(f"--conditions: unknown {unknown}; choose from: {'; '.join([*CONDITIONS, FOOTAGE])}")
        if BASELINE not in args.conditions:  # every condition is reported against it
            args.conditions.insert(0, BASELINE)
        if FOOTAGE in args.conditions and not (args.background_clips or args.background_bank):
            parser.error(f"{FOOTAGE!r} needs --background-clips or --background-bank")
    if args.per_type < 1:
        parser.error("--per-type must be at least 1")
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
