"""Which backend each kernel runs, and why; `LIVEVLM_KERNELS=torch` forces every op onto its torch reference."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

FORCE_ENV = "LIVEVLM_KERNELS"


@dataclass(frozen=True)
class Choice:
    """A backend and the reason it was chosen (shown by `livevlm.kernels.backend()` and `--stats`)."""

    backend: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.reason}"


def forced_torch() -> bool:
    """True when the user forced the torch reference path for every op."""
    return os.environ.get(FORCE_ENV, "").strip().lower() == "torch"


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
