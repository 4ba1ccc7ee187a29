"""One fixed-shape computation replayed as a CUDA graph: the decode step, the ViT cache's partial pass.

    call 1 ─► fn() eagerly on a side stream (lazy inits: cuBLAS handles, allocator pools, Triton compiles)
    call 2 ─► fn() captured (nothing runs while capturing), then replayed
    call 3.. ─► replayed: one launch for every kernel fn issued

fn must read and write the same tensors on every call and never sync with the host; its outputs are the graph's
own tensors from call 2 on (callers copy what they keep). Captures take turns process-wide (`CAPTURE`), so a
thread answering a question and one ingesting frames never capture at once; other threads may keep running
kernels meanwhile (thread-local capture errors). A capture that fails (fn synced with the host after all, or an
op that cannot be captured) is not fatal: fn runs eagerly from then on, `failed` says why, and a warning is
issued once; nothing of fn ran while capturing, so the eager call does the step the capture was meant to.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

CAPTURE = threading.Lock()
"""One CUDA graph capture at a time in a process."""


class GraphedCall:
    """`fn()` eager once, then captured and replayed (see the module docstring)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        """Why the capture failed (fn then runs eagerly every call), or None."""
        self._out: Any = None

    def __call__(self) -> Any:
        self.calls += 1
        if self.failed is not None:
            return self.fn()
        if self.graph is None:
            if self.calls == 1:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    out = self.fn()
                torch.cuda.current_stream().wait_stream(stream)
                return out
            graph = torch.cuda.CUDAGraph()
            try:
                with CAPTURE, torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._out = self.fn()
            except RuntimeError as exc:  # e.g. "operation not permitted when stream is capturing"
                self.failed = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self._out = None
                warnings.warn(f"a CUDA graph capture failed, running eagerly instead: {self.failed}",
                              RuntimeWarning, stacklevel=2)  # fmt: skip
                return self.fn()
            self.graph = graph
        self.graph.replay()
        return self._out
