"""Load on `livevlm serve`: N push streams at 2 fps and M question clients, over loopback, for a fixed time.

    python benchmarks/serve_load.py                                  # bundled model, N = 1, 4, 8, 20 s each
    python benchmarks/serve_load.py --shape qwen2-vl-2b --streams 1,4 --seconds 30   # full shape, random weights

Per N a fresh server (uvicorn on a thread of this process, 127.0.0.1, a free port; the model is loaded once and
shared by every server) gets N push streams, each fed JPEG frames of the bundled sample clip (looped, pts
increasing) over its WebSocket at `--fps` by the wall clock, and M clients that ask in a loop, each question
over the next stream round-robin, through `POST /v1/streams/{id}/ask` (SSE). Reported per N: time to the first
`delta` event (TTFT) p50/p95 and its ratio to N = 1 of the same run, whole-answer time, ingestion fps and
frames dropped per stream (from `GET /v1/streams/{id}`), the scheduler's counters (`/v1/health`), the process's
peak RSS and how much CPU other processes took meanwhile (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import io
import itertools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import BenchParser, cpu_info, provenance, require, run_cli

import livevlm
from livevlm import SessionConfig, load_model
from livevlm.assets import sample_video_path
from livevlm.stream import read_frames

# the serve extra and the clients are optional: a clone without them gets one line, not an ImportError
require("fastapi", "uvicorn", "websockets", "PIL", "httpx2", hint="pip install 'livevlm[serve]' httpx2")
import httpx2 as httpx
import uvicorn
from PIL import Image
from websockets.asyncio.client import connect

from livevlm.cli.serve import bind
from livevlm.serve import ServeConfig, ServeLimits, build_app

QUESTION = "What colour is the circle?"  # the bundled model answers it on its sample clip ("red")
WARM_GUARD_S = 300.0  # seconds; the warm-up only waits this long for every stream's first chunk
DRAIN_GUARD_S = 300.0  # seconds; answers still running when the window closes may finish within this


# -- the server ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True  # lifespan shutdown: every stream closed
        self.thread.join(60)


def start_server(config: ServeConfig, adapter: Any) -> Server:
    """The real app on a free loopback port, uvicorn on a thread (as tests/serve_fixtures.py does)."""
    sock = bind("127.0.0.1", 0)
    app = build_app(config, adapter)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)


# -- what the machine and the process did -------------------------------------------------------------------


def proc_status_kib(key: str) -> int | None:
    with open("/proc/self/status") as f:
        return next((int(ln.split()[1]) for ln in f if ln.startswith(key + ":")), None)


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux `clear_refs` 5) so each setting's peak is its own; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process): other processes' CPU is the difference."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v) - v[3] - v[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()
    return busy, int(s[11]) + int(s[12])  # utime + stime of every thread


class RssSampler:
    """Peak VmRSS sampled every 0.2 s (a check on VmHWM, and the figure where clear_refs is refused)."""

    def __init__(self) -> None:
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_kib = max(self.peak_kib, proc_status_kib("VmRSS") or 0)

    def start(self) -> RssSampler:
        self.peak_kib = proc_status_kib("VmRSS") or 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the clients --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    stream: str
    start: float
    ttft_s: float | None = None
    total_s: float | None = None
    tokens: int | None = None
    chunks: int | None = None
    error: str | None = None


@dataclass
class Pusher:
    sid: str
    sent: int = 0
    acks: int = 0
    errors: list[str] = field(default_factory=list)
    late: int = 0  # frames sent more than half a frame interval after their slot (the client fell behind)


async def push(url: str, p: Pusher, jpegs: list[bytes], fps: float, t0: float, stop: asyncio.Event) -> None:
    """Send frame k at t0 + k / fps (wall clock), pts k / fps; acks are read by a second task."""
    async with connect(url.replace("http://", "ws://") + f"/v1/streams/{p.sid}/ws", max_size=2**20) as ws:

        async def acks() -> None:
            async for message in ws:
                reply = json.loads(message)
                if reply.get("type") == "ack":
                    p.acks += 1
                else:
                    p.errors.append(str(reply.get("message")))

        reader = asyncio.create_task(acks())
        loop = asyncio.get_running_loop()
        for k in itertools.count():
            slot = t0 + k / fps
            if await _sleep_until(loop, slot, stop):
                break
            p.late += loop.time() - slot > 0.5 / fps
            await ws.send(json.dumps({"pts": k / fps, "format": "jpeg"}))
            await ws.send(jpegs[k % len(jpegs)])
            p.sent += 1
        await asyncio.sleep(0.5)  # the last acks
        reader.cancel()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float, stop: asyncio.Event) -> bool:
    """Sleep until loop time `when`; True if `stop` was set first."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, when - loop.time()))
    except TimeoutError:
        return False
    return True


async def ask(client: httpx.AsyncClient, url: str, sid: str, question: str, max_tokens: int) -> Answer:
    """One question over SSE: time to the first `delta` event and to `done`."""
    t0 = time.perf_counter()
    answer = Answer(sid, t0)
    body = {"question": question, "max_tokens": max_tokens}
    try:
        async with client.stream("POST", f"{url}/v1/streams/{sid}/ask", json=body) as resp:
            if resp.status_code != 200:
                answer.error = f"{resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                return answer
            event = None
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "delta" and answer.ttft_s is None:
                        answer.ttft_s = time.perf_counter() - t0
                    elif event == "done":
                        answer.total_s = time.perf_counter() - t0
                        answer.tokens, answer.chunks = data["tokens"], data["chunks"]
                    elif event == "error":
                        answer.error = str(data.get("message"))
    except httpx.HTTPError as e:
        answer.error = f"{type(e).__name__}: {e}"
    return answer


async def questioner(
    client: httpx.AsyncClient,
    url: str,
    sids: list[str],
    order: itertools.count,
    args: argparse.Namespace,
    end: float,
    out: list[Answer],
) -> None:
    """Ask in a loop until `end` (perf_counter), each question over the next stream round-robin."""
    while time.perf_counter() < end:
        out.append(await ask(client, url, sids[next(order) % len(sids)], args.question, args.max_tokens))


# -- one setting --------------------------------------------------------------------------------------------


async def stream_status(client: httpx.AsyncClient, url: str, sid: str) -> dict[str, Any]:
    r = await client.get(f"{url}/v1/streams/{sid}")
    r.raise_for_status()
    return r.json()["status"]


async def drive(url: str, n: int, args: argparse.Namespace, jpegs: list[bytes]) -> dict[str, Any]:
    timeout = httpx.Timeout(DRAIN_GUARD_S)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as client:
        sids = []
        for i in range(n):
            r = await client.post(f"{url}/v1/streams", json={"source": "push", "name": f"cam{i}"})
            r.raise_for_status()
            sids.append(r.json()["id"])
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        pushers = [Pusher(sid) for sid in sids]
        t0 = loop.time() + 0.2
        tasks = [
            asyncio.create_task(push(url, p, jpegs, args.fps, t0 + i / (n * args.fps), stop))  # staggered
            for i, p in enumerate(pushers)
        ]

        # 1. warm-up: every stream has a chunk of context, and one question has been answered (not measured)
        deadline = time.perf_counter() + WARM_GUARD_S
        while min([(await stream_status(client, url, s))["chunks"] for s in sids]) < 1:
            if time.perf_counter() > deadline:
                raise SystemExit(f"N={n}: not every stream had a chunk after {WARM_GUARD_S:.0f} s")
            await asyncio.sleep(1.0)
        warm = await ask(client, url, sids[0], args.question, args.max_tokens)
        if warm.error:
            raise SystemExit(f"N={n}: the warm-up question failed: {warm.error}")

        # 2. the measured window: pushers keep going, M clients ask until it closes, answers running then finish.
        # Ingestion is measured between the two snapshots, which bracket every answer: the stream GETs can hold
        # the server's event loop while a step runs (see README), so none is made while an answer is timed.
        a = await snapshot(client, url, sids, pushers)
        peak_reset = reset_peak_rss()
        rss = RssSampler().start()
        try:
            w0 = time.perf_counter()
            answers: list[Answer] = []
            order = itertools.count()
            asking = [
                asyncio.create_task(questioner(client, url, sids, order, args, w0 + args.seconds, answers))
                for _ in range(args.questioners)
            ]
            await asyncio.sleep(args.seconds)
            await asyncio.wait_for(asyncio.gather(*asking), DRAIN_GUARD_S)
            b = await snapshot(client, url, sids, pushers)
            stop.set()
            await asyncio.gather(*tasks)
            peak_hwm_kib = proc_status_kib("VmHWM")
        finally:
            rss.stop()
        for s in sids:
            await client.delete(f"{url}/v1/streams/{s}")

    memory = {
        "peak_rss_mib": (peak_hwm_kib if peak_reset else rss.peak_kib) / 1024,
        "peak_rss_source": "VmHWM, reset per setting" if peak_reset else "VmRSS sampled every 0.2 s",
        "sampled_peak_rss_mib": rss.peak_kib / 1024,
    }
    return summarize(n, args, sids, pushers, a, b, answers, memory)


async def snapshot(
    client: httpx.AsyncClient, url: str, sids: list[str], pushers: list[Pusher]
) -> dict[str, Any]:
    """Time, CPU ticks, frames sent, the scheduler's counters and every stream's status."""
    out: dict[str, Any] = {"t": time.perf_counter(), "ticks": cpu_ticks(), "load": os.getloadavg()[0]}
    out["sent"] = [p.sent for p in pushers]
    out["health"] = (await client.get(f"{url}/v1/health")).json()["scheduler"]
    out["status"] = {s: await stream_status(client, url, s) for s in sids}
    return out


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(
    n: int,
    args: argparse.Namespace,
    sids: list[str],
    pushers: list[Pusher],
    a: dict[str, Any],
    b: dict[str, Any],
    answers: list[Answer],
    memory: dict[str, Any],
) -> dict[str, Any]:
    ms, span = 1e3, b["t"] - a["t"]
    per_stream = []
    for i, (s, p) in enumerate(zip(sids, pushers, strict=True)):
        s0, s1 = a["status"][s], b["status"][s]
        per_stream.append(
            {
                "id": s,
                "frames_sent": b["sent"][i] - a["sent"][i],
                "frames_sent_late": p.late,
                "acks": p.acks,
                "push_errors": p.errors[:5],
                "frames_in": s1["frames_in"] - s0["frames_in"],
                "frames_processed": s1["frames_processed"] - s0["frames_processed"],
                "frames_dropped": s1["frames_dropped"] - s0["frames_dropped"],
                "ingest_fps": (s1["frames_processed"] - s0["frames_processed"]) / span,
                "send_fps": (b["sent"][i] - a["sent"][i]) / span,
                "context_tokens_end": s1["context_tokens"],
                "chunks_end": s1["chunks"],
            }
        )
    ok = [x for x in answers if x.error is None and x.ttft_s is not None]
    ttft = [x.ttft_s * ms for x in ok]
    total = [x.total_s * ms for x in ok if x.total_s is not None]
    ingest = [p["ingest_fps"] for p in per_stream]
    dropped = [p["frames_dropped"] for p in per_stream]
    (busy0, own0), (busy1, own1) = a["ticks"], b["ticks"]
    hz = os.sysconf("SC_CLK_TCK")
    h0, h1 = a["health"], b["health"]
    keys = ("ingest_turns", "question_turns", "ingest_wait_seconds", "question_wait_seconds", "busy_seconds")
    delta = {k: h1[k] - h0[k] for k in keys}
    return {
        "streams": n,
        "questioners": args.questioners,
        "ask_seconds": args.seconds,
        "measured_seconds": span,
        "questions": len(answers),
        "answered": len(ok),
        "errors": [x.error for x in answers if x.error is not None][:10],
        "error_count": sum(x.error is not None for x in answers),
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p95": pct(ttft, 95),
        "ttft_ms_max": max(ttft, default=None),
        "answer_ms_p50": pct(total, 50),
        "answer_ms_p95": pct(total, 95),
        "answer_tokens_mean": float(np.mean([x.tokens for x in ok if x.tokens is not None])) if ok else None,
        "answer_chunks_mean": float(np.mean([x.chunks for x in ok if x.chunks is not None])) if ok else None,
        "ingest_fps_per_stream_mean": float(np.mean(ingest)),
        "ingest_fps_per_stream_min": min(ingest),
        "frames_dropped_per_stream_mean": float(np.mean(dropped)),
        "frames_dropped_per_stream_max": max(dropped),
        "frames_sent_per_stream_mean": float(np.mean([p["frames_sent"] for p in per_stream])),
        **memory,
        "scheduler": {
            **delta,
            "busy_fraction": delta["busy_seconds"] / span,
            "turns_by_stream": {
                s: h1["turns_by_stream"].get(s, 0) - h0["turns_by_stream"].get(s, 0) for s in sids
            },
        },
        "contention": {
            "loadavg_1m_start": a["load"],
            "loadavg_1m_end": b["load"],
            "this_process_cores": (own1 - own0) / hz / span,
            "other_processes_cores": max(0.0, (busy1 - busy0) - (own1 - own0)) / hz / span,
            "machine_cores": os.cpu_count(),
        },
        "per_stream": per_stream,
        "ttft_ms_samples": [round(t, 2) for t in ttft],
    }


# -- the model ----------------------------------------------------------------------------------------------


def load(args: argparse.Namespace, tmp: str) -> tuple[Any, SessionConfig]:
    """The shared adapter and the streams' session config: the bundled model, or a full shape, random weights."""
    if args.shape == "bundled":
        return load_model(None), SessionConfig(fps=args.fps)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from baseline import build_full_checkpoint  # released architecture fields, random weights, real tokenizer

    t0 = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=build_full_checkpoint, args=(args.shape, tmp, args.dtype, "cpu")
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building the {args.shape} checkpoint failed (exit code {child.exitcode})")
    print(f"built random-weight {args.shape} ({args.dtype}) in {time.perf_counter() - t0:.1f} s", flush=True)
    adapter = load_model(tmp, dtype=args.dtype, max_pixels=args.max_pixels)
    return adapter, SessionConfig(model=tmp, dtype=args.dtype, fps=args.fps, max_pixels=args.max_pixels)


def sample_jpegs(fps: float) -> list[bytes]:
    """The bundled clip's frames at `fps`, JPEG-encoded as a camera app would send them."""
    out = []
    for frame in read_frames(str(sample_video_path()), fps=fps):
        buf = io.BytesIO()
        Image.fromarray(frame.data).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    adapter, session = load(args, tmp)
    load_s = time.perf_counter() - t0
    jpegs = sample_jpegs(args.fps)
    limits = ServeLimits(
        max_streams=max(args.streams),
        questions_per_minute=0,  # the load is the point
        max_new_tokens=max(args.max_tokens, ServeLimits.max_new_tokens),
    )
    settings = []
    for n in args.streams:
        server = start_server(ServeConfig(session=session, limits=limits), adapter)
        try:
            settings.append(asyncio.run(drive(server.url, n, args, jpegs)))
        finally:
            server.stop()
        s = settings[-1]
        print(
            f"N={n}: {s['answered']} answers, TTFT p95 {s['ttft_ms_p95'] or 0:.0f} ms, "
            f"ingest {s['ingest_fps_per_stream_mean']:.2f} fps/stream",
            flush=True,
        )
    one = next((s for s in settings if s["streams"] == 1), None)
    for s in settings:
        for q in ("p50", "p95"):
            base, value = (one or {}).get(f"ttft_ms_{q}"), s[f"ttft_ms_{q}"]
            s[f"ttft_{q}_vs_1_stream"] = value / base if base and value is not None else None
    four = next((s for s in settings if s["streams"] == 4), None)
    ratio = four["ttft_p95_vs_1_stream"] if four else None
    return {
        **provenance(__file__, args, args.argv),
        "shape": args.shape,
        "model": "bundled yardstick (livevlm/assets/yardstick)"
        if args.shape == "bundled"
        else f"{args.shape} architecture, random weights",
        "device": "cpu",
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "family": adapter.family,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "loadavg_1m_before": load_before,
        "load_seconds": load_s,
        "torch": torch.__version__,
        "livevlm": livevlm.__version__,
        "transformers": importlib.metadata.version("transformers"),
        "python": platform.python_version(),
        "client": {
            "video": sample_video_path().name,
            "frames_in_loop": len(jpegs),
            "jpeg_quality": 90,
            "jpeg_bytes_mean": float(np.mean([len(j) for j in jpegs])),
            "pacing": "wall clock, streams staggered",
            "question": args.question,
            "max_tokens": args.max_tokens,
            "stream_choice": "round-robin",
        },
        "server_limits": {
            "max_streams": limits.max_streams,
            "buffer_frames": limits.buffer_frames,
            "questions_per_minute": limits.questions_per_minute,
        },
        "goal": {
            "what": "with 4 streams, p95 TTFT within 2x of a single stream's",
            "ttft_p95_ratio_4_vs_1": ratio,
            "met": None if ratio is None else ratio <= 2.0,
        },
        "settings": settings,
        "notes": args.note,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def print_table(result: dict[str, Any]) -> None:
    cols = (
        "N",
        "asked",
        "err",
        "TTFT p50",
        "TTFT p95",
        "p95 vs N=1",
        "answer p50",
        "ingest fps/str",
        "min",
        "dropped/str",
        "busy",
        "other cores",
        "peak RSS MiB",
    )

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = [
        (
            str(s["streams"]),
            str(s["questions"]),
            str(s["error_count"]),
            f(s["ttft_ms_p50"], ".0f") + " ms",
            f(s["ttft_ms_p95"], ".0f") + " ms",
            f(s["ttft_p95_vs_1_stream"], ".2f") + "x",
            f(s["answer_ms_p50"], ".0f") + " ms",
            f(s["ingest_fps_per_stream_mean"], ".2f"),
            f(s["ingest_fps_per_stream_min"], ".2f"),
            f(s["frames_dropped_per_stream_mean"], ".1f"),
            f(s["scheduler"]["busy_fraction"], ".0%"),
            f(s["contention"]["other_processes_cores"], ".2f"),
            f(s["peak_rss_mib"], ".0f"),
        )
        for s in result["settings"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print(
        f"serve_load: {result['model']}, M={result['flags']['questioners']} questioners, "
        f"{result['flags']['seconds']:g} s per N, {result['flags']['fps']:g} fps per stream, "
        f"torch threads {result['torch_threads']}"
    )
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    g = result["goal"]
    if g["ttft_p95_ratio_4_vs_1"] is not None:
        print(f"goal ({g['what']}): {g['ttft_p95_ratio_4_vs_1']:.2f}x -> {'met' if g['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["bundled", "qwen2-vl-2b", "qwen2.5-vl-3b"], default="bundled")
    p.add_argument(
        "--streams", default="1,4,8", help="comma-separated numbers of push streams (one setting each)"
    )
    p.add_argument("--questioners", type=int, default=2, help="question clients asking in a loop (M)")
    p.add_argument(
        "--seconds", type=float, default=None, help="measured window per setting (default 20; full shapes 30)"
    )
    p.add_argument("--fps", type=float, default=2.0, help="frames per second each stream pushes (wall clock)")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--max-tokens", type=int, default=16, help="most tokens per answer")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=224 * 224, help="full shapes: pixels per frame after resizing"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="full shapes: weights dtype")
    p.add_argument("--note", action="append", default=[], help="a note recorded in the JSON (repeatable)")
    p.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/serve_load_<shape>.json"
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.streams = [int(x) for x in args.streams.split(",") if x.strip()]
    except ValueError:
        p.error(f"--streams {args.streams!r}: comma-separated whole numbers, e.g. 1,4,8")
    if not args.streams or min(args.streams) < 1 or args.questioners < 0 or args.fps <= 0:
        p.error("--streams needs numbers >= 1, --questioners >= 0, --fps > 0")
    if 1 not in args.streams:  # every N is reported against one stream of the same run
        args.streams.insert(0, 1)
        print("adding N=1: each setting's TTFT is reported against one stream's", flush=True)
    if (args.seconds is not None and args.seconds <= 0) or args.max_tokens < 1 or args.threads < 1:
        p.error("--seconds must be > 0, --max-tokens and --threads at least 1")
    args.seconds = args.seconds or (20.0 if args.shape == "bundled" else 30.0)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out or Path(__file__).resolve().parent / "results" / f"serve_load_{args.shape}.json"
    with tempfile.TemporaryDirectory(prefix="livevlm-serve-load-") as tmp:
        result = run(args, tmp)
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
