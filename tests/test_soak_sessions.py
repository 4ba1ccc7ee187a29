"""Many sessions on one loaded model, opened and closed in a loop (a server's life): nothing may pile up.

Each session spills KV to disk, watches a lavfi graph or takes frames from push(block=False), runs a standing
query and answers; after `close()` no thread, file descriptor or spill dir of it is left.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest
from leaks import open_files

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig, KVTiers, RetrievalConfig
from livevlm.models import load_model
from livevlm.stream import open_source

HANG_GUARD = 60.0
MODES = ("push", "push_nonblocking", "watch", "standing")


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)



def _settled(before: set[str]) -> set[str]:
    """Threads started since `before` still alive once the closed sessions' threads had a chance to end."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        extra = {t.name for t in threading.enumerate()} - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def _use(session: Session, mode: str, frames: list[np.ndarray]) -> None:
    if mode == "push":
        for i in range(10):
            session.push(frames[i % len(frames)])
    elif mode == "push_nonblocking":
        for i in range(10):
            session.push(frames[i % len(frames)], block=False)
        session.wait_for_chunk(0, timeout=HANG_GUARD)
    elif mode == "watch":
        session.watch(open_source("lavfi:testsrc2=size=160x120:rate=10", fps=2.0, realtime=False))  # endless
        session.wait_for_chunk(3, timeout=HANG_GUARD)
    else:
        for i in range(4):
            session.push(frames[i % len(frames)])
        session.watch_for("What colour is the circle?", choices=["red", "green"])
        for i in range(6):
            session.push(frames[i % len(frames)])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_sessions_opened_and_closed_in_a_loop_leave_nothing_behind(bundled, tmp_path):
    tiers = KVTiers(device_bytes=30_000, cpu_bytes=30_000, spill_dir=str(tmp_path))
    configs = [SessionConfig(kv=RetrievalConfig(tiers=tiers), max_new_tokens=4),
               SessionConfig(kv=BilevelConfig(tiers=tiers), max_new_tokens=4)]  # fmt: skip
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    warm = Session(bundled, configs[0])  # first-use allocations (thread pools, lazy imports) before counting
    _use(warm, "watch", frames)
    "".join(warm.ask("What colour is the circle?"))
    warm.close()
    gc.collect()
    threads, fds = {t.name for t in threading.enumerate()}, open_files()
    spilled = 0
    for i in range(60):
        session = Session(bundled, configs[i % 2])
        _use(session, MODES[i % len(MODES)], frames)
        assert "".join(session.ask("What colour is the circle?")) is not None
        spilled += session.stats.kv.chunks_disk > 0
        session.close()
        assert os.listdir(tmp_path) == []  # close() removed this session's spill dir at once
    gc.collect()
    assert spilled >= 30  # most sessions did reach the disk tier
    assert _settled(threads) == set()
    assert open_files() - fds == set()
