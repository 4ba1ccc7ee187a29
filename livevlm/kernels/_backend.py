"""Which backend each kernel runs, and why; `LIVEVLM_KERNELS=torch` forces every op onto its torch reference,
`LIVEVLM_KERNELS=triton` forces the Triton kernels (on CPU only under `TRITON_INTERPRET=1`: how tests run them)."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError, LivevlmError

FORCE_ENV = "LIVEVLM_KERNELS"
FORCE_VALUES = ("", "auto", "torch", "triton")
INTERPRET_ENV = "TRITON_INTERPRET"


class KernelUnavailableError(LivevlmError, RuntimeError):
    """A forced backend cannot run here (triton not installed, or CPU tensors without the interpreter)."""


@dataclass(frozen=True)
class Choice:
    """A backend and the reason it was chosen (shown by `livevlm.kernels.backend()` and `--stats`)."""

    backend: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.reason}"


def forced() -> str:
    """The backend the user forced with LIVEVLM_KERNELS ("torch", "triton"), or "" for the automatic choice."""
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if value not in FORCE_VALUES:
        raise ConfigError(f"{FORCE_ENV} must be one of torch, triton, auto (or unset), got {value!r}")
    return "" if value == "auto" else value


def forced_torch() -> bool:
    """True when the user forced the torch reference path for every op."""
    return forced() == "torch"


@functools.cache
def installed_version(module: str, distribution: str) -> str | None:
    """The version of the distribution providing `module`, or None when it is not installed (found without
    importing it: optional GPU packages are imported only when used)."""
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def triton_version() -> str | None:
    """The installed triton's version, or None (`import livevlm` never needs it)."""
    return installed_version("triton", "triton")


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get(INTERPRET_ENV, "").strip().lower() in ("1", "true", "on", "yes")


def triton_choice(device: torch.device | str = "cpu") -> Choice:
    """Whether an op with a Triton kernel runs it for tensors on `device`, and why."""
    device = torch.device(device)
    mode = forced()
    if mode == "torch":
        return Choice("torch", "forced by LIVEVLM_KERNELS=torch")
    if mode == "triton":
        if triton_version() is None:
            raise KernelUnavailableError(
                "LIVEVLM_KERNELS=triton but triton is not installed (pip install triton)"
            )
        if device.type == "cpu" and not interpreting():
            raise KernelUnavailableError("LIVEVLM_KERNELS=triton on cpu tensors needs TRITON_INTERPRET=1")
        return Choice(
            "triton", "forced by LIVEVLM_KERNELS=triton" + (" (interpreter)" if interpreting() else "")
        )
    if triton_version() is None:
        return Choice("torch", "no triton")
    if not torch.cuda.is_available():
        return Choice("torch", "no cuda (triton kernels run on GPU; the interpreter is for tests)")
    if device.type != "cuda":
        return Choice("torch", f"tensors on {device.type} (triton kernels run on cuda)")
    return Choice("triton", "cuda available")


def check_forced(device: torch.device | str = "cpu") -> None:
    """Raise now what LIVEVLM_KERNELS would raise at the first kernel call on `device` (`ValueError`: a bad
    value; `KernelUnavailableError`: triton forced where it cannot run). `load_model` calls it before reading
    weights (as a `ConfigError`), so a stream is not ingested only to fail at its first question."""
    triton_choice(device)


def use_triton(device: torch.device) -> bool:
    """The dispatch test every op with a Triton kernel makes per call."""
    return triton_choice(device).backend == "triton"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
