"""The CPU a benchmark ran on, recorded in its JSON: speed ratios of the fast paths depend on it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from livevlm.kernels import backend, cpu_flags

SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "avx_ne_convert", "amx_bf16", "neon", "asimd")


def cpu_info(dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """CPU model, torch's ISA level, the SIMD flags that choose kernels, and each kernel's backend."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "model": model or platform.processor(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "simd_flags": sorted(f for f in SIMD_FLAGS if f in cpu_flags()),
        "kernels": {op: str(choice) for op, choice in backend(dtype).items()},
    }


def rss_mib() -> float:
    """This process's resident set size now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_context(load_before: float, threads: int | None = None) -> dict[str, Any]:
    """What a result JSON records about the run beside its figures: versions, CPU, threads, load, time."""
    import datetime

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "torch_threads": threads or torch.get_num_threads(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(out: Path, result: dict[str, Any]) -> None:
    """The result as indented JSON at `out` (its folder made), and a line saying where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
