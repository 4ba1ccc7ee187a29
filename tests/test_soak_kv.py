"""Long runs of a bounded KV store: a full spill disk, no disk tier at all, an ingestion that dies.

A user watching a stream for hours with `--kv retrieval` (no `--kv-disk-budget`: the spill file grows) fills the
disk sooner or later; the stream must go on within what the disk holds, and memory must stay within budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livevlm import Session, SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig
from livevlm.models import load_model
from livevlm.stream import Ingestor, open_source

ROOT = Path(__file__).resolve().parents[1]
LAVFI = "lavfi:testsrc2=size=160x120:rate=10"
HANG_GUARD = 300


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


_FULL_DISK_CHILD = """
import json, os, resource, sys
from livevlm import Session, SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig
from livevlm.errors import OutputError
from livevlm.models import load_model
from livevlm.stream import open_source

spill, snap, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = load_model(None)
config = SessionConfig(kv=RetrievalConfig(tiers=KVTiers(device_bytes=40_000, cpu_bytes=60_000, spill_dir=spill)))
source = "lavfi:testsrc2=size=160x120:rate=10"
out = {}
saved = Session(model, config)  # a snapshot with chunks on disk, written before the disk is "full"
saved.ingest(open_source(source, fps=2.0, realtime=False, max_frames=60))
out["saved_disk_chunks"] = saved.stats.kv.chunks_disk
saved.save(snap)
saved.close()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # no file grows past `limit` bytes
try:
    Session.load(snap, model, spill_dir=spill)
    out["load"] = "loaded"
except OutputError as e:
    out["load"] = f"OutputError: {e}"
out["after_load"] = sorted(os.listdir(spill))
session = Session(model, config)
ingestor = session.watch(open_source(source, fps=2.0, realtime=False, max_frames=400))
ingestor.wait(240)
stats = session.stats
spill_files = [os.path.join(spill, d, "chunks.bin") for d in os.listdir(spill)]
out.update(
    frames=ingestor.stats.frames_processed, error=ingestor.stats.error, running=ingestor.running,
    disk_error=stats.kv.disk_error, chunks=stats.chunks, chunks_disk=stats.kv.chunks_disk,
    dropped=stats.kv.chunks_dropped, spill_sizes=[os.path.getsize(f) for f in spill_files],
    answer="".join(session.ask("What colour is the circle?", max_new_tokens=4)),
)
session.close()
out["after_close"] = os.listdir(spill)
print(json.dumps(out))
"""


def test_a_full_spill_disk_caps_the_spill_file_and_the_stream_goes_on(tmp_path):
    """A spill write that fails (here RLIMIT_FSIZE: EFBIG, as ENOSPC on a full disk) used to raise a raw OSError
    out of push() -- under watch() the ingestion thread died with `stats.error` None -- and left the store's
    accounting wrong. Now the spill file stays at the size it reached and the oldest chunks make room."""
    spill, snap = tmp_path / "spill", tmp_path / "snap"
    spill.mkdir()
    limit = 300_000
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, str(spill), str(snap), str(limit)], check=False,
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["saved_disk_chunks"] > 20  # the snapshot's spilled chunks do not fit under the limit
    assert out["load"].startswith("OutputError: cannot write the KV spill file")
    assert out["after_load"] == []  # no half-filled spill dir left behind by the failed load
    assert out["frames"] == 400 and out["error"] is None and not out["running"]
    assert out["chunks"] == 200 and out["chunks_disk"] > 0 and out["dropped"] > 0
    assert "cannot write the KV spill file" in out["disk_error"]
    assert len(out["spill_sizes"]) == 1 and 0 < out["spill_sizes"][0] <= limit
    assert out["after_close"] == []
    assert "the KV spill file stays at" in run.stderr  # one warning says what happened


def test_without_a_disk_tier_the_chunk_index_stays_within_host_ram(bundled):
    """`disk_bytes=0` (`--kv-disk-budget 0`): the per-chunk index used to grow in RAM for ever, past `cpu_bytes`
    (40x a 256K budget after 4000 chunks); now its oldest blocks are forgotten like a full disk's."""
    tiers = KVTiers(device_bytes=120_000, cpu_bytes=100_000, disk_bytes=0)
    session = Session(bundled, SessionConfig(kv=RetrievalConfig(tiers=tiers)))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    held = []
    for i in range(2 * 330):  # 330 chunks: past five blocks of 64 index rows
        session.push(frames[i % 4])
        if i % 132 == 131:
            held.append(session.stats.kv.cpu_bytes)
    kv = session.stats.kv
    assert kv.chunks == 330 and kv.disk_bytes == 0 and session.stats.kv.disk_error is None
    assert max(held) == held[0], held  # flat after warm-up (was: one more block every 64 chunks)
    assert kv.chunks_device > 0  # the newest chunks (the window) keep their KV
    assert session.ask("What colour is the circle?", max_new_tokens=4)
    session.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_ingestion_killed_by_an_untyped_error_says_why():
    """A sink failing with something else than a LivevlmError (out of memory, a full disk, a bug) used to end
    the ingestion thread with `stats.error` None: a served stream just stopped, saying nothing."""
    seen = []

    def sink(frame):
        seen.append(frame)
        if len(seen) == 3:
            raise MemoryError("out of memory (simulated)")

    ingestor = Ingestor(open_source(LAVFI, fps=2.0, realtime=False, max_frames=20), sink).start()
    assert ingestor.wait(HANG_GUARD)
    stats = ingestor.stats
    assert len(seen) == 3 and stats.frames_processed == 2 and not stats.running
    assert stats.error == "MemoryError: out of memory (simulated)"
    assert isinstance(ingestor.error, MemoryError)
