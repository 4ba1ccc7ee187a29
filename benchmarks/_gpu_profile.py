"""Where a chunk's and an answer token's time goes (`benchmarks/gpu.py --profile SHAPE`): torch.profiler over a
few chunks of ingestion and a short answer, summarised as GPU-busy time against wall time, kernel launches and host
syncs per chunk / token, and the ops that take the most GPU time and the most host time. An overhead-bound loop
shows as GPU-busy far below wall time with many launches and syncs per chunk."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "cudaStreamSynchronize", "cudaDeviceSynchronize")
"""Host events that wait for the device (a `.item()` / `.tolist()` / explicit sync)."""


def _device_us(event: Any) -> float:
    return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0) or 0)


def _summary(prof: Any, wall: float, units: int) -> dict[str, Any]:
    """Totals per unit (chunk or token) and the top ops by device time and by host self time."""
    events = prof.events()
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    syncs = sum(1 for e in events if e.name in SYNC_OPS)
    table = prof.key_averages()
    by_device = sorted(table, key=_device_us, reverse=True)[:12]
    by_host = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "units": units, "wall_ms_per_unit": 1e3 * wall / units, "gpu_busy_ms_per_unit": busy_us / 1e3 / units,
        "gpu_busy_share": busy_us / 1e6 / wall if wall else None, "kernels_per_unit": len(kernels) / units,
        "host_syncs_per_unit": syncs / units,
        "top_device": [{"op": e.key[:80], "calls": e.count, "device_ms": _device_us(e) / 1e3} for e in by_device],
        "top_host": [{"op": e.key[:80], "calls": e.count, "host_self_ms": e.self_cpu_time_total / 1e3}
                     for e in by_host],
    }  # fmt: skip


def profile_setting(session: Any, frames: list[np.ndarray], question: str, tokens: int, frames_per_chunk: int,
                    sync: Callable[[], None]) -> dict[str, Any]:  # fmt: skip
    """Profile ingesting `frames` (after a 2-chunk warm-up outside the profile) and answering `tokens` tokens."""
    warm = 2 * frames_per_chunk
    for frame in frames[:warm]:
        session.push(frame)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for frame in frames[warm:]:
            session.push(frame)
        sync()
        wall = time.perf_counter() - t0
    chunks = max(1, (len(frames) - warm) // frames_per_chunk)
    ingest = _summary(prof, wall, chunks)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        n = sum(1 for _ in session.ask_ids(question, tokens))
        sync()
        wall = time.perf_counter() - t0
    return {"ingest_per_chunk": ingest, "answer_per_token": _summary(prof, wall, max(1, n))}


def print_profile(shape: str, setting: str, prof: dict[str, Any]) -> None:
    for part, s in prof.items():
        share = "-" if s["gpu_busy_share"] is None else f"{100 * s['gpu_busy_share']:.0f}%"
        print(f"  profile {shape} {setting} {part}: wall {s['wall_ms_per_unit']:.1f} ms, GPU busy "
              f"{s['gpu_busy_ms_per_unit']:.1f} ms ({share}), {s['kernels_per_unit']:.0f} kernels, "
              f"{s['host_syncs_per_unit']:.1f} host syncs")  # fmt: skip
        for row in s["top_device"][:6]:
            print(f"    device {row['device_ms']:9.2f} ms {row['calls']:6d}x {row['op']}")
        for row in s["top_host"][:6]:
            print(f"    host   {row['host_self_ms']:9.2f} ms {row['calls']:6d}x {row['op']}")
