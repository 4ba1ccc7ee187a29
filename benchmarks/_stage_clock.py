"""Each chunk's ViT and prefill time on the GPU's own timeline, without making ingestion wait for the GPU.

`baseline.synchronised` syncs around every stage so that `SessionStats`' host timers count the GPU's work; that
also stops the host from preparing the next chunk while the GPU runs this one, which is not how a user's loop
runs. `StageClock` records CUDA events around the same stages instead (the ViT from `preprocess` to
`merged_grid`, the prefill around `extend` and the fixed-shape chunk prefill) and reads them once, after
ingestion. A pair of events measures the time the GPU's stream spent between them: the stage's kernels, plus
any gap where the GPU waited for the host to queue them. On CPU it records nothing and the session's own
timers are the stage times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from livevlm.models.static_prefill import ChunkPrefill

STAGES = ("vit", "prefill")


class StageClock:
    """CUDA events around an adapter's ingestion stages (see the module docstring)."""

    def __init__(self, adapter: Any) -> None:
        self.cuda = adapter.device.type == "cuda"
        self._pairs: dict[str, list[tuple[Any, Any]]] = {stage: [] for stage in STAGES}
        self._open: dict[str, Any] = {}
        self._depth = 0
        if not self.cuda:
            return
        adapter._stage_clock = self
        adapter.preprocess = self._starting("vit", adapter.preprocess)
        adapter.merged_grid = self._ending("vit", adapter.merged_grid)
        adapter.extend = self._around("prefill", adapter.extend)
        if not getattr(ChunkPrefill.__call__, "clocked", False):  # a class: wrapped once per process
            plain = ChunkPrefill.__call__

            def clocked(prefill: ChunkPrefill, *args: Any, **kwargs: Any) -> Any:
                clock = getattr(prefill.adapter, "_stage_clock", None)
                call = (lambda *a, **k: plain(prefill, *a, **k))
                return clock._around("prefill", call)(*args, **kwargs) if clock is not None else call(*args, **kwargs)

            clocked.clocked = True  # type: ignore[attr-defined]
            ChunkPrefill.__call__ = clocked  # type: ignore[method-assign]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def take(self) -> dict[str, list[float]]:
        """Seconds of each stage's recorded calls since the last take, in call order (waits for the GPU once);
        empty lists on CPU."""
        self.sync()
        out = {stage: [start.elapsed_time(end) / 1e3 for start, end in pairs] for stage, pairs in self._pairs.items()}
        for pairs in self._pairs.values():
            pairs.clear()
        return out

    def _event(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _starting(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._open[stage] = self._event()
            return fn(*args, **kwargs)

        return call

    def _ending(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = self._open.pop(stage, None)
            if start is not None:
                self._pairs[stage].append((start, self._event()))
            return fn(*args, **kwargs)

        return call

    def _around(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # a fixed-shape prefill that fell back to `extend`: counted once
                return fn(*args, **kwargs)
            self._depth += 1
            start = self._event()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                self._pairs[stage].append((start, self._event()))

        return call
