"""KV policies on a long stream: absolute time-to-first-token and ingest cost per chunk of every policy beside
`full` in the same run, memory, and the crossover where a bounded policy answers faster than `full`.

    python benchmarks/kv_store.py                          # tiny random Qwen2.5-VL, CPU: 100 / 1k / 10k frames
    python benchmarks/kv_store.py --shape qwen2-vl-2b --frames 100 1000 --dtype bfloat16   # by hand (slow)
    python benchmarks/kv_store.py --soak 100000            # bilevel, RSS every 5000 frames, disk tier, cleanup

Frames are synthetic (a pool of noise frames pushed as fast as the loop takes them) at a small size, so the
numbers are about the KV store, not the ViT. Each (policy, frames) point runs in its own process: its peak RSS
is its own. Points run frame count by frame count, every policy at a count before the next (so machine load
drifts alike over them); ratios are against `full` at the same frame count. TTFT is the median over `--reps`
askings of each question, in wall time and in process CPU time (the latter is less disturbed by other load
on a shared machine). The tiny model is built with a large `max_position_embeddings` so that `full` can answer
over 10k frames at all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, rss_mib, run_cli

from livevlm import Session, SessionConfig, load_model
from livevlm.cache import kv_config, kv_config_of, parse_bytes
from livevlm.cache.vit_cache import VIT_CACHE_PRESETS
from livevlm.models import ChunkPlace
from livevlm.models.devices import check_device

POLICIES = ("full", "sink_window", "retrieval", "bilevel", "bilevel-probe")
"""bilevel-probe: bilevel selecting after a probe forward (one_pass=False), the two-forward question path."""
GRID = (100, 1000, 10000)
"""The frame counts every shape is owed; those not run are listed in the JSON as `not_measured`."""
QUESTIONS = ("What happened at the very start?", "What is on the screen now?", "Was there a red light?")


def build_tiny(path: str, family: str) -> None:
    """The tests' tiny random Qwen-VL with room for long streams (max_position_embeddings 2**20)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from livevlm.models.tiny import tiny_config
    from livevlm.models.tokenizer import build_qwen2_tokenizer

    config = tiny_config(family)
    config.text_config.max_position_embeddings = 2**20
    cls = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    torch.manual_seed(0)
    cls(config).eval().save_pretrained(path)
    build_qwen2_tokenizer().save_pretrained(path)


def build_model(args: argparse.Namespace, path: str) -> None:
    if args.shape == "tiny":
        build_tiny(path, "qwen2_5_vl")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from baseline import build_full_checkpoint  # the released architecture configs, random weights

    build_full_checkpoint(args.shape, path, args.dtype, "cpu")


def session_for(args: argparse.Namespace, policy: str, model_dir: str) -> Session:
    adapter = load_model(model_dir, device=args.device, dtype=args.dtype)
    pixels = args.size * args.size
    kv = kv_config(policy.removesuffix("-probe"), args.kv_budget if policy != "full" else None)
    if policy.endswith("-probe"):
        kv = replace(kv_config_of(kv), one_pass=False)
    config = SessionConfig(kv=kv, min_pixels=pixels, max_pixels=pixels, device=args.device, dtype=args.dtype,
                           vit_cache=args.vit_cache)  # fmt: skip
    return Session(adapter, config)


def frame_pool(size: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def serve_point(conn: Any, args: argparse.Namespace, policy: str, frames: int, model_dir: str) -> None:
    """One point, in a fresh process: ingest `frames`, say "ready", answer a round of the questions per "ask"
    (wall and CPU seconds to the first token), then send the point's figures on "done"."""
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    session = session_for(args, policy, model_dir)
    pool = frame_pool(args.size, args.pool)
    per_chunk: list[float] = []
    prev = session.stats.seconds.prefill
    t0 = time.perf_counter()
    for i in range(frames):
        if session.push(pool[i % len(pool)]) is not None:
            now = session.stats.seconds.prefill
            per_chunk.append(now - prev)
            prev = now
    sync()
    ingest_s = time.perf_counter() - t0
    conn.send("ready")
    ttft, ttft_cpu = [], []
    try:
        while conn.recv() == "ask":
            wall, cpu = [], []
            for question in QUESTIONS:
                t0, c0 = time.perf_counter(), time.process_time()
                next(iter(session.ask_ids(question, 1)))
                sync()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            ttft, ttft_cpu = ttft + wall, ttft_cpu + cpu
            conn.send((wall, cpu))
    except EOFError:  # the benchmark ended (another point failed): nothing to report to
        session.close()
        return
    probe = [probe_seconds(session, q, sync) for q in QUESTIONS for _ in range(args.reps)]
    kv = session.stats.kv
    adapter = session.adapter  # the session's own O(stream) position lookup, timed apart from the store
    place = ChunkPlace(0, len(adapter.prefix_ids(session.config.system_prompt)), adapter.frames_per_chunk / 2.0)
    t0 = time.perf_counter()
    adapter.text_start_after_video(place, len(per_chunk), (args.size // 28, args.size // 28))
    rope_index_s = time.perf_counter() - t0
    edge = max(1, len(per_chunk) // 10)
    out = {
        "policy": policy, "frames": frames, "chunks": len(per_chunk),
        "ttft_ms": 1e3 * median(ttft), "ttft_cpu_ms": 1e3 * median(ttft_cpu), "ttft_ms_min": 1e3 * min(ttft),
        "select_ms": 1e3 * getattr(kv, "last_select_seconds", 0.0), "probe_ms": 1e3 * median(probe),
        "session_rope_index_ms": 1e3 * rope_index_s,
        "ingest_ms_per_chunk_first10pct": 1e3 * median(per_chunk[1 : edge + 1] or per_chunk),
        "ingest_ms_per_chunk_last10pct": 1e3 * median(per_chunk[-edge:]),
        "ingest_ms_per_chunk": 1e3 * median(per_chunk[1:] or per_chunk),
        "ingest_s": ingest_s, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "kv": {k: v for k, v in vars(kv).items() if k != "last_scores"},
        "attention": {k: v for k, v in session.stats.kernels.items() if k.startswith("attention_")},
    }
    session.close()
    conn.send(out)


def probe_seconds(session: Session, question: str, sync: Any) -> float:
    """The question path's first forward alone: the question run on the ingestion view to read its queries
    (query-aware policies only; 0 for the others). Reads the session's private store, as the soak does."""
    kv, adapter = session._kv, session.adapter
    if not kv.needs_queries or getattr(kv.config, "one_pass", False):  # one pass: no probe forward
        return 0.0
    suffix = adapter.suffix_ids(question)
    embeds, at = adapter.embed_ids(suffix), adapter.text_positions(session._stored_end, len(suffix))
    t0 = time.perf_counter()
    adapter.question_queries(embeds, at, kv.probe_view(kv.snapshot()))
    sync()
    return time.perf_counter() - t0


def soak(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    """Push `args.soak` frames through `bilevel` with a small budget; RSS every `args.every` frames."""
    torch.set_num_threads(args.threads)
    session = session_for(args, "bilevel", model_dir)
    pool = frame_pool(args.size, args.pool)
    rows, t0 = [], time.perf_counter()
    for i in range(args.soak):
        session.push(pool[i % len(pool)])
        if (i + 1) % args.every == 0:
            kv = session.stats.kv
            rows.append({"frames": i + 1, "rss_mib": rss_mib(), "seconds": time.perf_counter() - t0,
                         "device_bytes": kv.device_bytes, "cpu_bytes": kv.cpu_bytes, "disk_bytes": kv.disk_bytes,
                         "chunks_disk": kv.chunks_disk, "ingest_context_tokens": kv.ingest_context_tokens})
            print(json.dumps(rows[-1]), flush=True)
    ttft_t0 = time.perf_counter()
    next(iter(session.ask_ids(QUESTIONS[0], 1)))
    ttft = time.perf_counter() - ttft_t0
    spill = session._kv.store.disk_dir  # private: to check the cleanup below
    session.close()
    after = [r["rss_mib"] for r in rows[max(1, len(rows) // 10) :]]
    budget = kv_config("bilevel", args.kv_budget).tiers
    return {
        "rows": rows, "ttft_ms_at_end": 1e3 * ttft, "spill_dir": spill,
        "spill_dir_removed_on_close": spill is not None and not os.path.exists(spill),
        "rss_after_warmup_min_mib": min(after), "rss_after_warmup_max_mib": max(after),
        "rss_spread_vs_min": max(after) / min(after) - 1,
        "device_within_budget": all(r["device_bytes"] <= budget.device_bytes for r in rows),
        "cpu_within_budget": all(r["cpu_bytes"] <= budget.cpu_bytes for r in rows),
    }


class Point:
    """A `serve_point` process: started (it ingests) on construction, then asked rounds, then finished."""

    def __init__(self, args: argparse.Namespace, policy: str, frames: int, model_dir: str, wait: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.name = f"the {policy} point at {frames} frames"
        # daemon: a point left waiting for its next round ends with this process if another point fails
        self.proc = ctx.Process(target=serve_point, args=(child, args, policy, frames, model_dir), daemon=True)
        self.proc.start()
        child.close()  # only the child holds its end: its exit then ends a recv() here instead of hanging it
        if wait:
            self.ready()

    def _recv(self) -> Any:
        """The point's next message; its process ending first (it failed: its traceback is above) ends the run."""
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            raise SystemExit(f"{self.name} failed (exit code {self.proc.exitcode}); see its error above") from None

    def ready(self) -> None:
        """Wait until the point's process has ingested its frames."""
        if self._recv() != "ready":
            raise SystemExit(f"{self.name} sent something other than 'ready'")

    def ask(self) -> tuple[list[float], list[float]]:
        self.conn.send("ask")
        return self._recv()

    def finish(self) -> dict[str, Any]:
        self.conn.send("done")
        out = self._recv()
        self.proc.join()
        return out


def run_frames(args: argparse.Namespace, frames: int, model_dir: str) -> list[dict[str, Any]]:
    """Every policy at `frames`. `full` stays up while each bounded policy runs: their question rounds alternate,
    so each bounded TTFT has a `full` TTFT taken under the same machine load beside it (`paired_full_*`)."""
    full = Point(args, "full", frames, model_dir, wait=not args.parallel) if "full" in args.policies else None
    bounded = [p for p in args.policies if p != "full"]
    started = {p: Point(args, p, frames, model_dir, wait=False) for p in bounded} if args.parallel else {}
    for point in ([full] if full is not None and args.parallel else []) + list(started.values()):
        point.ready()  # --parallel: every policy ingested at once, then asked in turn
    runs = []
    for policy in bounded:
        point = started.get(policy) or Point(args, policy, frames, model_dir)
        rounds, full_rounds = [], []
        for i in range(args.reps):
            if full is not None and i % 2 == 0:
                full_rounds.append(full.ask())
            rounds.append(point.ask())
            if full is not None and i % 2 == 1:
                full_rounds.append(full.ask())
        run = point.finish()
        if full_rounds:
            run["paired_full_ttft_ms"] = 1e3 * median(t for wall, _ in full_rounds for t in wall)
            run["paired_full_ttft_cpu_ms"] = 1e3 * median(t for _, cpu in full_rounds for t in cpu)
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "kv"}), flush=True)
    if full is not None:
        for _ in range(args.reps if not runs else 0):
            full.ask()
        runs.insert(0, full.finish())
        print(json.dumps({k: v for k, v in runs[0].items() if k != "kv"}), flush=True)
    return runs


def beside_full(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run with its ratios to `full` at the same frame count (None where `full` was not run there)."""
    full = {r["frames"]: r for r in runs if r["policy"] == "full"}
    out = []
    for r in runs:
        f = full.get(r["frames"])
        ratios = None if f is None else {
            "ttft": r["ttft_ms"] / r.get("paired_full_ttft_ms", f["ttft_ms"]),
            "ttft_cpu": r["ttft_cpu_ms"] / r.get("paired_full_ttft_cpu_ms", f["ttft_cpu_ms"])
            if "ttft_cpu_ms" in r else None,
            "ingest_ms_per_chunk": r["ingest_ms_per_chunk"] / f["ingest_ms_per_chunk"]
            if "ingest_ms_per_chunk" in r else None,
        }  # fmt: skip
        out.append({**r, "vs_full": ratios})
    return out


def crossover(runs: list[dict[str, Any]], ratio: str = "ttft") -> dict[str, int | str]:
    """Per bounded policy, the smallest measured frame count where its TTFT is below `full`'s beside it
    (`ratio`: "ttft" wall time, "ttft_cpu" process CPU time)."""
    out: dict[str, int | str] = {}
    for r in sorted(beside_full(runs), key=lambda r: r["frames"]):
        if r["policy"] != "full":
            below = (r["vs_full"] or {}).get(ratio) is not None and r["vs_full"][ratio] < 1.0
            if below and not isinstance(out.get(r["policy"]), int):
                out[r["policy"]] = r["frames"]
            out.setdefault(r["policy"], "none measured")
    return out


def table(runs: list[dict[str, Any]]) -> str:
    """One row per point: absolute TTFT and ingest ms/chunk beside `full`'s at the same frame count."""
    runs = sorted(beside_full(runs), key=lambda r: (r["frames"], r["policy"] != "full"))
    full = {r["frames"]: r for r in runs if r["policy"] == "full"}
    head = (f"{'frames':>7} {'policy':<12}{'TTFT ms':>9}{'full ms':>9}{'x full':>7}{'CPU ms':>8}{'x full':>7}"
            f"{'probe ms':>9}{'select ms':>10}{'pos ms':>8}{'ingest ms/chunk':>16}{'full':>7}{'x full':>7}"
            f"{'ctx tok':>8}{'KV mem KiB':>11}{'disk KiB':>9}{'RSS MiB':>8}")
    lines = [head]
    for r in runs:
        f, v, kv = full.get(r["frames"]), r["vs_full"] or {}, r["kv"]
        ingest = r.get("ingest_ms_per_chunk", r["ingest_ms_per_chunk_last10pct"])
        lines.append(
            f"{r['frames']:>7} {r['policy']:<12}{r['ttft_ms']:>9.1f}{_num(r.get('paired_full_ttft_ms', f and f['ttft_ms']), 9, 1)}"
            f"{_num(v.get('ttft'), 7, 2)}{_num(r.get('ttft_cpu_ms'), 8, 1)}{_num(v.get('ttft_cpu'), 7, 2)}"
            f"{r.get('probe_ms', 0):>9.1f}{r.get('select_ms', 0):>10.1f}{r.get('session_rope_index_ms', 0):>8.1f}{ingest:>16.2f}"
            f"{_num(f and f.get('ingest_ms_per_chunk'), 7, 2)}{_num(v.get('ingest_ms_per_chunk'), 7, 2)}"
            f"{kv.get('last_context_tokens') or kv['tokens']:>8}{kv['bytes'] // 1024:>11}"
            f"{kv.get('disk_bytes', 0) // 1024:>9}{r['peak_rss_mib']:>8.0f}")
    for ratio, what in (("ttft", "wall"), ("ttft_cpu", "CPU")):
        lines.append(f"crossover ({what} TTFT below full's beside it, smallest measured frame count): "
                     + ", ".join(f"{p} {c}" for p, c in crossover(runs, ratio).items()))  # fmt: skip
    return "\n".join(lines)


def shown(path: str, parser: argparse.ArgumentParser) -> str:
    """`--show`: the table of a saved result; a missing, unreadable or foreign file is a flag error (one line)."""
    try:
        return table(json.loads(Path(path).read_text())["runs"])
    except OSError as e:
        parser.error(f"--show {path}: {e.strerror or e}")
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, another benchmark's, a --soak result
        parser.error(f"--show {path}: not a kv_store.py result with runs")


def _num(x: float | None, width: int, digits: int) -> str:
    return f"{x:>{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "qwen2-vl-2b", "qwen2.5-vl-3b"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--frames", nargs="+", type=int, default=[100, 1000, 10000])
    parser.add_argument("--size", type=int, default=56, help="frame side in pixels (56: 4 visual tokens/chunk)")
    parser.add_argument("--kv-budget", default="4M", help="in-memory KV budget of the bounded policies")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--pool", type=int, default=16, help="distinct noise frames cycled (2: every chunk equal)")
    parser.add_argument("--vit-cache", default="none", choices=VIT_CACHE_PRESETS,
                        help="ViT feature cache preset (lossless: skip repeats)")
    parser.add_argument("--parallel", action="store_true",
                        help="ingest every policy's point at once (one process each; ingest ms/chunk then share the "
                             "cores), then ask in alternating rounds as usual: long shapes on a multi-core machine")
    parser.add_argument("--reps", type=int, default=5, help="times each question is asked (TTFT: the median)")
    parser.add_argument("--note", default=None, help="a line kept in the JSON (e.g. which points a GPU still owes)")
    parser.add_argument("--soak", type=int, default=0, help="frames for the RSS soak (0: no soak)")
    parser.add_argument("--every", type=int, default=5000, help="soak: frames between RSS samples")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kv_store-<shape>.json)")
    parser.add_argument("--show", default=None, help="print the table of a saved result JSON and exit")
    args = parser.parse_args(argv)
    if args.show:
        return print(shown(args.show, parser))
    # checked here, before the model is built and a process per point starts
    if parse_bytes(args.kv_budget) < 1:
        parser.error(f"--kv-budget must be at least 1 byte, got {args.kv_budget!r}")
    check_device(args.device)
    if min(args.frames) < 2 or args.reps < 1 or args.pool < 1 or args.size < 28 or args.every < 1 or args.soak < 0:
        parser.error("--frames need at least 2 (one chunk), --reps, --pool and --every at least 1, --size >= 28, "
                     "--soak >= 0")  # fmt: skip
    if not args.soak and "full" not in args.policies:  # every ratio is to `full` at the same frame count
        args.policies.insert(0, "full")
        print("adding full: the bounded policies are reported against it", flush=True)
    results = Path(__file__).parent / "results"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, args.shape)
        build_model(args, model_dir)
        meta = {**provenance(__file__, args, argv), "shape": args.shape, "device": args.device, "dtype": args.dtype,
                "size": args.size, "vit_cache": args.vit_cache, "pool": args.pool, "kv_budget": args.kv_budget,
                "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
                "loadavg_1m_before": os.getloadavg()[0], "cpu_count": os.cpu_count(), "cpu": cpu_info(),
                "host": platform.node(), "note": args.note, "reps": args.reps, "parallel_ingest": args.parallel,
                "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}  # fmt: skip
        if args.soak:
            out = Path(args.out or results / f"kv_store-soak-{args.shape}.json")
            report = {**meta, "soak_frames": args.soak, **soak(args, model_dir)}
            print({k: v for k, v in report.items() if k != "rows"})
        else:
            out = Path(args.out or results / f"kv_store-{args.shape}.json")
            runs: list[dict[str, Any]] = []
            meta["not_measured"] = [n for n in GRID if n not in args.frames]
            for frames in sorted(args.frames):
                runs += run_frames(args, frames, model_dir)
                report = {**meta, "crossover": crossover(runs), "crossover_cpu": crossover(runs, "ttft_cpu"),
                          "runs": beside_full(runs)}  # fmt: skip
                write(out, report)  # kept as it goes: long runs may be cut short
            print(table(runs))
    write(out, report)
    print(f"wrote {out}")


def write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    run_cli(main)
