"""The KV store's disk tier: no use after close, no spill files left behind by killed processes, the cap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from livevlm import SessionClosedError
from livevlm.cache import KVTiers
from livevlm.cache.chunks import ChunkStore
from livevlm.cache.disk import (
    DiskTier,
    install_sigterm_cleanup,
    pid_space,
    remove_spill_dirs_of,
    remove_stale_spill_dirs,
)

ROOT = Path(__file__).resolve().parents[1]
BLOB = torch.arange(200, dtype=torch.uint8)


def test_use_after_close_raises_and_writes_into_no_other_file(tmp_path):
    disk = DiskTier(str(tmp_path))
    offset = disk.put(BLOB)
    fd = disk._fd  # the descriptor number the closed tier used to hold
    disk.close()
    other = tmp_path / "unrelated.txt"
    other.write_bytes(b"keep me")
    with open(other, "r+b") as f:
        assert f.fileno() == fd  # the OS hands the freed number to the next open: the hazard is real
        with pytest.raises(SessionClosedError):
            disk.put(BLOB)
        with pytest.raises(SessionClosedError):
            disk.get(offset, BLOB.numel())
        with pytest.raises(SessionClosedError):
            disk.free(offset, BLOB.numel())
    assert other.read_bytes() == b"keep me"
    disk.close()  # closing twice is harmless


@contextmanager
def _child(parent: Path, body: str = "") -> Iterator[subprocess.Popen]:
    """A Python process that makes a DiskTier under `parent`, writes a blob, prints its dir and waits."""
    code = (
        "import sys, time, torch\n"
        "from livevlm.cache.disk import DiskTier\n"
        f"{body}\n"
        "disk = DiskTier(sys.argv[1])\n"
        "disk.put(torch.arange(100, dtype=torch.uint8))\n"
        "print(disk.dir, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(parent)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    with child:
        try:
            yield child
        finally:
            if child.poll() is None:
                child.kill()


def _spill_dir_of(child: subprocess.Popen) -> Path:
    line = child.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, f"the child printed no spill dir (exit code {child.poll()})"
    return Path(line)


def test_spill_dir_of_a_killed_process_is_removed_by_the_next_disk_tier(tmp_path):
    live = DiskTier(str(tmp_path))  # this process's own tier: its owner is alive
    foreign = tmp_path / "livevlm-kv-notmine"  # no owner file, recent: not ours to judge
    foreign.mkdir()
    (tmp_path / "unrelated").mkdir()
    with _child(tmp_path) as child:
        stale = _spill_dir_of(child)
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
    assert (stale / "chunks.bin").stat().st_size == 100  # SIGKILL runs no cleanup: the dir is left behind
    assert (stale / "owner.pid").read_text().split()[0] == str(child.pid)
    fresh = DiskTier(str(tmp_path))
    assert not stale.exists()
    assert Path(fresh.dir).is_dir() and Path(live.dir).is_dir() and foreign.is_dir()
    assert (tmp_path / "unrelated").is_dir()
    assert remove_stale_spill_dirs(str(tmp_path)) == []
    fresh.close()
    live.close()


def test_a_supervisor_removes_a_killed_workers_spill_dir_once_the_process_is_gone(tmp_path):
    """remove_spill_dirs_of waits for the (asynchronously) killed owner to exit, then removes its dir."""
    with _child(tmp_path) as child:
        stale = _spill_dir_of(child)
        assert remove_stale_spill_dirs(str(tmp_path)) == []  # its owner still runs: kept
        killer = threading.Timer(0.5, child.kill)  # the kill lands while the supervisor already waits
        killer.start()
        assert remove_spill_dirs_of(child.pid, str(tmp_path), wait_s=60) == [str(stale)]
        killer.join()
    assert list(tmp_path.iterdir()) == []
    boot, namespace = pid_space().split(":", 1)  # what a replica reports, so a router knows whose pids match
    assert namespace == os.readlink("/proc/self/ns/pid") and len(boot) == 36


def test_a_reused_owner_pid_counts_as_gone_and_another_pid_namespace_is_kept(tmp_path):
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("start times come from /proc")
    namespace = os.readlink("/proc/self/ns/pid")
    reused = tmp_path / "livevlm-kv-reused"  # our pid, but written by a process started at another time
    reused.mkdir()
    (reused / "owner.pid").write_text(f"{os.getpid()}\n1\n{namespace}\n")
    elsewhere = tmp_path / "livevlm-kv-elsewhere"  # a pid from another pid namespace: cannot tell, kept
    elsewhere.mkdir()
    (elsewhere / "owner.pid").write_text("999999999\n1\npid:[1]\n")
    assert remove_stale_spill_dirs(str(tmp_path)) == [str(reused)]
    assert elsewhere.is_dir()


def test_old_ownerless_spill_dirs_are_removed_and_others_are_kept(tmp_path):
    old = tmp_path / "livevlm-kv-old"  # what a spill dir from before owner files looks like
    old.mkdir()
    (old / "chunks.bin").write_bytes(b"kv")
    mixed = tmp_path / "livevlm-kv-mixed"  # holds something a spill dir never holds
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine")
    young = tmp_path / "livevlm-kv-young"
    young.mkdir()
    (young / "chunks.bin").write_bytes(b"kv")
    two_hours_ago = time.time() - 7200
    for path in (old / "chunks.bin", old, mixed / "notes.txt", mixed):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert remove_stale_spill_dirs(str(tmp_path)) == [str(old)]
    assert not old.exists() and mixed.is_dir() and young.is_dir()


def test_sigterm_removes_the_spill_dir_and_exits_143(tmp_path):
    with _child(tmp_path) as child:
        spill = _spill_dir_of(child)
        assert spill.is_dir()
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 143
    assert not spill.exists()


def test_sigterm_cleanup_chains_to_an_existing_handler(tmp_path):
    body = (
        "import signal\n"
        "from livevlm.cache.disk import install_sigterm_cleanup\n"
        "signal.signal(signal.SIGTERM, lambda s, f: print('theirs', flush=True))\n"
        "assert install_sigterm_cleanup() and install_sigterm_cleanup()\n"
    )
    with _child(tmp_path, body) as child:
        spill = _spill_dir_of(child)
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 143
        assert child.stdout.read().strip() == "theirs"  # type: ignore[union-attr]
    assert not spill.exists()


def test_sigterm_cleanup_leaves_other_threads_and_an_ignored_sigterm_alone():
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(install_sigterm_cleanup()))
    thread.start()
    thread.join()
    assert result == [False]
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert not install_sigterm_cleanup() and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_chunk_store_keeps_the_spill_file_under_disk_bytes(tmp_path):
    kv = torch.randn(2, 2, 2, 4, 16)  # 2 KiB per chunk
    cap = 5 * kv.nbytes
    tiers = KVTiers(device_bytes=0, cpu_bytes=0, disk_bytes=cap, spill_dir=str(tmp_path))
    store = ChunkStore(tiers, (2, 2, 16), torch.float32, "cpu", summaries=False)
    for i in range(12):
        store.add(kv + i)
        assert os.path.getsize(Path(store.disk_dir) / "chunks.bin") <= cap
        assert store.bytes["disk"] <= cap
        assert store.dropped == max(0, i + 1 - 5) and store.counts()["disk"] == min(i + 1, 5)
    records = store.records
    assert [r.tier for r in records] == ["dropped"] * 7 + ["disk"] * 5
    assert store.load(records[6]) is None and torch.equal(store.load(records[7]), kv + 7)
    store.close()


def test_chunk_store_spill_file_stays_under_disk_bytes_with_chunks_of_varying_size(tmp_path):
    cap = 4096
    tiers = KVTiers(device_bytes=0, cpu_bytes=0, disk_bytes=cap, spill_dir=str(tmp_path))
    store = ChunkStore(tiers, (1, 1, 4), torch.float32, "cpu")  # an index row is 32 bytes; no host RAM: 1-row blocks
    sizes = [[3, 5, 8, 4, 7, 1, 6][(i * i + i // 3) % 7] for i in range(600)]  # 96..256 bytes per chunk
    for i, tokens in enumerate(sizes):
        store.add(torch.full((1, 2, 1, tokens, 4), float(i)))
        spill = os.path.getsize(Path(store.disk_dir) / "chunks.bin")
        assert spill <= cap and store.bytes["disk"] + store.summaries.disk_bytes <= cap  # index blocks count too
    log = store.summaries
    assert log.block == 1 and log.disk_bytes == 2048  # spilled rows take half of disk_bytes: 64 of them
    assert store.forgotten == 535 and log.ram_bytes == 32  # rows 0-534 forgotten, 535-598 on disk, 599 open in RAM
    kept = [r for r in store.records if r.tier == "disk"]
    assert store.dropped == 600 - len(kept) and sum(r.nbytes for r in kept) > 1024
    assert all(r.index >= store.forgotten for r in kept)
    assert all(torch.equal(store.load(r), torch.full((1, 2, 1, r.tokens, 4), float(r.index))) for r in kept)
    assert torch.equal(store.summary_rows(535, 600)[0, 0, 0, :, 0], torch.arange(535.0, 600.0))
    assert not store.summary_rows(0, 535).any()  # forgotten rows read as zeros (and are never scored)
    store.close()


def test_a_chunk_larger_than_disk_bytes_is_dropped_without_a_spill_file(tmp_path):
    tiers = KVTiers(device_bytes=0, cpu_bytes=0, disk_bytes=1024, spill_dir=str(tmp_path))
    store = ChunkStore(tiers, (2, 2, 16), torch.float32, "cpu", summaries=False)
    store.add(torch.randn(2, 2, 2, 4, 16))  # 2 KiB
    assert store.dropped == 1 and store.disk_dir is None and not any(tmp_path.iterdir())
    store.close()


def test_a_forked_child_exiting_leaves_its_parents_spill_dir(tmp_path):
    code = (
        "import os, sys\n"
        "from livevlm.cache.disk import DiskTier\n"
        "disk = DiskTier(sys.argv[1])\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.exit(0)  # a normal exit runs the finalizers the child inherited\n"
        "os.waitpid(pid, 0)\n"
        "print(os.path.isdir(disk.dir))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(tmp_path)], check=True, capture_output=True, text=True,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert out.stdout.strip() == "True", out.stderr
    assert not any(tmp_path.iterdir())  # and the parent's own exit removed it


def test_index_rows_of_some_layers_read_only_those_from_spilled_blocks(tmp_path):
    tiers = KVTiers(device_bytes=0, cpu_bytes=0, spill_dir=str(tmp_path))
    store = ChunkStore(tiers, (3, 2, 4), torch.float32, "cpu", key_reps=2)
    for i in range(150):  # blocks 0 and 1 spill (only the open block stays in RAM)
        store.add(torch.randn(3, 2, 2, 5, 4) + i)
    whole = store.index_rows(10, 150)
    assert whole.shape == (3, 4, 2, 140, 4) and store.summaries.disk_bytes > 0
    for layers in (slice(1, 3), slice(0, 1), slice(2, 3)):
        torch.testing.assert_close(store.index_rows(10, 150, layers), whole[layers], rtol=0, atol=0)
    store.close()
