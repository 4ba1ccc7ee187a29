"""`livevlm.summarize` on long world videos with a known event timeline: event recall / precision, time, memory.

    python benchmarks/summarize_events.py                                  # 10 min: every policy; 60 min: sink_window
    python benchmarks/summarize_events.py --minutes 10 --policies sink_window --out /tmp/x.json

The videos come from tools/yardstick/timeline.py (objects appear, leave, change colour at known times; H.264
mp4 at 2 fps). Each run is one `summarize` call with the bundled model (or --model) in its own process (a clean peak RSS),
default options (30 s segments, the describe prompt). Scored: an event is recalled when a segment (or a
chapter) whose time range holds it within --tolerance names its object and kind ("the red circle appears"); the
table's recall / precision are the chapters' (a chapter spanning most of the video names almost anything in its
range, so the segments' scores stand beside them);
`objects` scores the colour + shape alone. Also: wall time, frames/s, peak RSS, RSS growth after warm-up
(the first quarter of the segments), tokens in context at each description.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _foreign_timeline import TIMELINE_CONDITIONS, write_foreign_video
from _machine import BenchParser, cpu_info, provenance, run_cli

from livevlm import SummarizeOptions
from livevlm.cache import available_kv_policies

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ is not installed
from tools.yardstick.timeline import read_events, score_events, write_video

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("full", "sink_window", "retrieval", "bilevel")


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_run(
    video: str, policy: str, options: Any, threads: int, tolerance: float, model: str | None = None
) -> dict[str, Any]:
    """summarize `video` with kv `policy` and `options` (run in a child process); the row of the table."""
    from livevlm import SessionConfig, summarize
    from livevlm.errors import LivevlmError

    torch.set_num_threads(threads)
    per_segment: list[dict[str, Any]] = []

    def record(seg: Any) -> None:
        per_segment.append({"start": seg.start, "end": seg.end, "rss_mb": round(rss_mb(), 1),
                            "context_tokens": seg.context_tokens, "text": seg.text})  # fmt: skip

    t0 = time.perf_counter()
    try:
        result = summarize(video, model, SessionConfig(kv=policy), options, on_segment=record)
    except LivevlmError as e:  # kv full past the model's context: recorded, not fatal
        return {"policy": policy, "error": f"{type(e).__name__}: {e}", "segments_done": len(per_segment),
                "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    wall = time.perf_counter() - t0
    events = read_events(video)
    rss = [s["rss_mb"] for s in per_segment]
    warm = rss[len(rss) // 4 :] or rss
    chapters = [(c.start, c.end, c.text) for c in result.chapters]
    return {
        "policy": policy, "frames": result.stats["frames"], "seconds": round(wall, 1),
        "frames_per_s": round(result.stats["frames"] / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_warmup_mb": [min(warm), max(warm)], "rss_growth_after_warmup": round(max(warm) / min(warm) - 1, 4),
        "context_tokens_max": max(s["context_tokens"] for s in per_segment),
        "context_tokens_last": per_segment[-1]["context_tokens"],
        "segments": len(result.segments), "chapters": len(result.chapters),
        "nonempty_descriptions": sum(bool(s.text) for s in result.segments),
        "distinct_descriptions": sorted({s.text for s in result.segments})[:20],
        "score_segments": score_events(events, [(s["start"], s["end"], s["text"]) for s in per_segment], tolerance),
        "score_chapters": score_events(events, chapters, tolerance),
        "summary": result.summary,
        "per_segment": per_segment,
    }  # fmt: skip


def in_child(*args: Any) -> dict[str, Any]:
    """`one_run` in a fresh spawned process, so each run's peak RSS is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(one_run, args)


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["video", "drawn", "policy", "events", "recall", "precision", "segment recall", "segment precision", "chapters",
            "obj recall", "obj precision", "time s", "frames/s", "peak RSS MiB", "RSS growth", "ctx tokens"]  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if "error" in r:
            lines.append(" | ".join([r["video"], r.get("drawn", "world"), r["policy"], "", r["error"][:60], *[""] * 11]))
            continue
        s, o = r["score_chapters"]["strict"], r["score_chapters"]["objects"]
        g = r["score_segments"]["strict"]
        cells = [r["video"], r.get("drawn", "world"), r["policy"], str(r["score_chapters"]["events"]), _num(s["recall"]), _num(s["precision"]),
                 _num(g["recall"]), _num(g["precision"]), str(r["chapters"]), _num(o["recall"]), _num(o["precision"]), f"{r['seconds']:.0f}", f"{r['frames_per_s']:.1f}",
                 f"{r['peak_rss_mb']:.0f}", f"{100 * r['rss_growth_after_warmup']:.1f}%", str(r["context_tokens_max"])]  # fmt: skip
        lines.append(" | ".join(cells))
    return "\n".join(f"| {line} |" for line in lines)


def _minutes(text: str) -> list[float]:
    """'10,60' -> [10.0, 60.0], sorted; each > 0."""
    try:
        values = sorted(float(m) for m in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers of minutes, e.g. 10,60") from None
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: every length must be > 0 minutes")
    return values


def _draws(text: str) -> list[str]:
    """'world,foreign:light' -> ['world', 'foreign:light']; each a known drawing."""
    known = ("world", *(f"foreign:{c}" for c in TIMELINE_CONDITIONS))
    draws = [d.strip() for d in text.split(",")]
    bad = [d for d in draws if d not in known]
    if bad or not draws:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or text!r}: choose from {', '.join(known)}")
    return draws


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=_minutes, default="10,60", help="video lengths (comma list, default 10,60)")
    p.add_argument("--policies", default=",".join(POLICIES), help="policies for the first (shortest) video")
    p.add_argument("--long-policies", default="sink_window", help="policies for the longer videos")
    p.add_argument("--segment", type=float, default=30.0, help="seconds per described segment (default 30)")
    p.add_argument(
        "--prompt", default=None, help="the per-segment prompt (default: summarize's describe prompt)"
    )
    p.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--tolerance", type=float, default=5.0, help="seconds an event may lie outside its window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw", type=_draws, default="world",
                   help="who draws the timeline (comma list): world (its renderer, the default) or foreign:"
                   f"{'|'.join(TIMELINE_CONDITIONS)} (yardstick_foreign.py's generator: the same events, other "
                   "pixels); each drawing is run with every policy")  # fmt: skip
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=RESULTS / "summarize-events.json")
    args = p.parse_args(argv)
    minutes = args.minutes
    for flag, names in (("--policies", args.policies), ("--long-policies", args.long_policies)):
        unknown = [n for n in names.split(",") if n not in available_kv_policies()]
        if unknown:  # checked before minutes of video are generated
            p.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(available_kv_policies())}")
    if args.segment <= 0 or args.tolerance < 0 or args.threads < 1:
        p.error("--segment must be > 0, --tolerance >= 0, --threads at least 1")
    if args.model is not None and not Path(args.model).exists():
        p.error(f"--model {args.model}: no such checkpoint folder")
    options = SummarizeOptions(segment=args.segment, **({"prompt": args.prompt} if args.prompt else {}))
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="livevlm-events-") as tmp:
        for i, m in enumerate(minutes):
            for draw in args.draw:
                video = Path(tmp) / f"{draw.replace(':', '-')}-{m:g}min.mp4"
                t0 = time.perf_counter()
                if draw == "world":
                    events = write_video(video, m * 60, args.seed)
                else:
                    events = write_foreign_video(video, m * 60, args.seed, draw.split(":")[1])
                print(f"{video.name}: {len(events)} events, drawn in {time.perf_counter() - t0:.1f} s", flush=True)
                for policy in (args.policies if i == 0 else args.long_policies).split(","):
                    row = {
                        "video": f"{m:g} min",
                        "drawn": draw,
                        **in_child(str(video), policy, options, args.threads, args.tolerance, args.model),
                    }
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    result = {
        **provenance(__file__, args, argv),
        "machine": {"cpu": cpu_info(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "load_average_at_start": load,
        "prompt": options.prompt,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
