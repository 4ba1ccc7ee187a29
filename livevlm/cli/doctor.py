"""`livevlm doctor`: what a bug report needs about this machine — devices, library versions, dtype support,
CPU ISA, and which backend every kernel runs and why. `--json` prints the same as one JSON object.

A kernel setting that cannot run here (a bad LIVEVLM_KERNELS, triton forced on CPU without TRITON_INTERPRET=1)
is marked in the table, said once on stderr, and makes the exit status 1."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from .. import __version__, kernels
from ..kernels.attention import attention_choice, grouped_choice

NOT_INSTALLED = "not installed"
UNAVAILABLE = "UNAVAILABLE"
PACKAGES = ("torch", "transformers", "triton", "flash-attn")
ISA_PREFIXES = ("avx2", "avx512", "amx", "avx_vnni", "avx_ne_convert", "fma", "f16c")
NATIVE_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
ENV_VARS = (kernels.FORCE_ENV, "TRITON_INTERPRET", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def add_parser(sub: Any) -> None:
    """Register the `doctor` subcommand."""
    d = sub.add_parser("doctor", help="print devices, versions, dtype support, CPU ISA and kernel backends")
    d.add_argument("--json", action="store_true", help="one JSON object instead of text")


def package_version(name: str) -> str:
    """The installed distribution's version, or "not installed" (read from metadata: nothing is imported)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return NOT_INSTALLED


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _runs(dtype: torch.dtype, device: str) -> bool:
    """Whether a small matmul in `dtype` runs on `device` (what the model's linears need)."""
    try:
        x = torch.ones(4, 4, dtype=dtype, device=device)
        return bool((x @ x).float().sum().item() == 64)
    except RuntimeError:
        return False


def _dtypes(device: str, flags: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, native in NATIVE_FLAGS.items():
        dtype = getattr(torch, name)
        entry: dict[str, Any] = {"runs": _runs(dtype, device)}
        if device == "cpu":
            entry["native"] = any(f in flags for f in native)  # else emulated through float32, slower
        elif name == "bfloat16":
            entry["native"] = torch.cuda.is_bf16_supported()
        out[name] = entry
    return out


def _kernels(device: str) -> dict[str, str]:
    """Op -> "backend: reason" on `device`; an op the forced backend cannot run here is marked UNAVAILABLE."""
    try:
        kernels.forced_torch()
    except ValueError as exc:  # a bad LIVEVLM_KERNELS value: no op can say what it would run; report, do not crash
        return {"error": str(exc)}
    dtype = torch.bfloat16
    try:
        table = {op: str(choice) for op, choice in kernels.backend(dtype, device).items()}
    except kernels.KernelUnavailableError as exc:  # triton forced where it cannot run: the rest still shown
        table = {"similarity": "torch: reference (only backend)",
                 **dict.fromkeys(kernels.TRITON_OPS, f"{UNAVAILABLE}: {exc}"),
                 "linear": str(kernels.linear_choice(torch.device(device), dtype)),
                 "packed_linear": str(kernels.pack_choice(device, dtype))}  # fmt: skip
    return table | {
        "attention": str(attention_choice(device, dtype)),
        "attention_grouped_llm": str(grouped_choice(device, dtype)),
    }


def problems(data: dict[str, Any]) -> list[str]:
    """The kernel settings of a `report()` that cannot run here ("device op: why"), deduplicated."""
    found: dict[str, None] = {}
    for device, table in data["kernels"].items():
        for op, choice in table.items():
            if op == "error" or choice.startswith(UNAVAILABLE):
                found[f"{device}: {choice.removeprefix(UNAVAILABLE + ': ')}"] = None
    return list(found)


def report() -> dict[str, Any]:
    """Everything `livevlm doctor` prints, as plain data."""
    flags = kernels.cpu_flags()
    devices: dict[str, Any] = {"cpu": {"model": _cpu_model(), "cores": os.cpu_count(),
                                       "torch_threads": torch.get_num_threads()}}  # fmt: skip
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices[f"cuda:{i}"] = {"model": p.name, "capability": f"{p.major}.{p.minor}",
                                    "memory_gib": round(p.total_memory / 2**30, 1)}  # fmt: skip
    names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "livevlm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": devices,
        "versions": {name: package_version(name) for name in PACKAGES},
        "dtypes": {name: _dtypes(name, flags) for name in names},
        "cpu_isa": sorted(f for f in flags if f.startswith(ISA_PREFIXES)),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": {name: _kernels(name) for name in names},
        "env": {name: os.environ.get(name, "") for name in ENV_VARS},
    }


def _text(data: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", *_text(value, indent + "  ")]
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: {' '.join(value) or '(none)'}")
        else:
            lines.append(f"{indent}{key}: {value if value != '' else '(unset)'}")
    return lines


def run(args: argparse.Namespace) -> int:
    """The `doctor` command; returns the exit status."""
    data = report()
    print(json.dumps(data, indent=2) if args.json else "\n".join(_text(data)))
    found = problems(data)
    for problem in found:  # the table above is still whole; this says why the exit status is 1
        print(f"livevlm doctor: kernels on {problem}", file=sys.stderr)
    return 1 if found else 0
