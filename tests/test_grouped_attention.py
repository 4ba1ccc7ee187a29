"""kernels.grouped_attention: grouped-query SDPA folds the query heads of a KV head into its rows instead of
repeating keys and values; it equals transformers' SDPA on every mask form it takes, hands every other call to
it, and the tiny models answer the same through it as through the forced reference (LIVEVLM_KERNELS=torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from livevlm import Session, SessionConfig, kernels
from livevlm.kernels import grouped_attention as ga
from livevlm.models import load_model


class _Attn(torch.nn.Module):
    """The attributes transformers' SDPA reads from an attention module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _qkv(batch=1, heads=6, kv_heads=2, q_len=5, past=37, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g)
    k = torch.randn(batch, kv_heads, past + q_len, dim, generator=g)
    v = torch.randn(batch, kv_heads, past + q_len, dim, generator=g)
    return q, k, v


def _chunk_mask(batch, q_len, past) -> torch.Tensor:
    """Every past token visible, the new ones causal (what a chunk or a question over the store sees)."""
    mask = torch.ones(batch, 1, q_len, past + q_len, dtype=torch.bool)
    mask[..., past:] = torch.tril(torch.ones(q_len, q_len, dtype=torch.bool))
    return mask


@pytest.mark.parametrize(
    "batch,heads,kv_heads,q_len,form",
    [(1, 6, 2, 5, "bool"), (1, 4, 2, 1, "none"), (2, 8, 2, 3, "additive"), (1, 12, 2, 7, "bool"), (1, 4, 1, 2, "bool")],
)
def test_folded_equals_repeated(batch, heads, kv_heads, q_len, form):
    past = 37
    q, k, v = _qkv(batch, heads, kv_heads, q_len, past)
    mask = None if form == "none" else _chunk_mask(batch, q_len, past)
    if form == "additive":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        mask[1, ..., 3] = torch.finfo(torch.float32).min  # the batch rows differ
    module = _Attn(heads // kv_heads)
    assert ga.foldable(q, k, mask)
    forward = ga.grouped_attention_forward(sdpa_attention_forward)
    ours, _ = forward(module, q, k, v, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == reference.shape == (batch, q_len, heads, q.shape[-1])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_folded_bf16_stays_close():
    q, k, v = (t.bfloat16() for t in _qkv(heads=12, q_len=4, past=500))
    mask = _chunk_mask(1, 4, 500)
    ours = ga.grouped_sdpa(q, k, v, mask, None)
    reference, _ = sdpa_attention_forward(_Attn(6), q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(ours.float(), reference, rtol=0.02, atol=0.02)


def test_calls_it_does_not_fold_go_to_the_fallback():
    q, k, v = _qkv(heads=4, kv_heads=2, q_len=3, past=5)
    mask = _chunk_mask(1, 3, 5)
    assert not ga.foldable(q, k, None)  # causal prefill without a mask: SDPA's is_causal path
    assert not ga.foldable(*_qkv(heads=4, kv_heads=4)[:2], mask)  # no groups
    assert not ga.foldable(q, k, mask, dropout=0.1)
    assert not ga.foldable(q, k, mask, softcap=30.0)
    assert not ga.foldable(q, k, mask, output_attentions=True)
    assert not ga.foldable(q, k, mask.expand(1, 4, 3, 8))  # a per-head mask
    calls = []

    def fallback(*args, **kwargs):
        calls.append(kwargs)
        return sdpa_attention_forward(*args, **kwargs)

    forward = ga.grouped_attention_forward(fallback)
    out, _ = forward(_Attn(2), q, k, v, None, is_causal=True)
    reference, _ = sdpa_attention_forward(_Attn(2), q, k, v, None, is_causal=True)
    assert len(calls) == 1 and calls[0]["is_causal"] is True
    torch.testing.assert_close(out, reference)


def _answers(adapter, kv: str) -> tuple[list[list[int]], dict]:
    session = Session(adapter, SessionConfig(kv=kv, max_pixels=16 * 28 * 28))
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(12)]
    answers = []
    for at in (6, 12):
        session.ingest(frames[at - 6 : at])
        answers.append(list(session.ask_ids("What is in the video?", max_new_tokens=6)))
    stats = session.stats.kernels
    session.close()
    return answers, stats


@pytest.mark.parametrize("kv", ["full", "bilevel"])
def test_tiny_models_answer_the_same_as_the_forced_reference(tiny_checkpoints, family, kv, monkeypatch):
    """Loaded the user's way, the tiny model runs `sdpa_grouped` on its LLM (2 KV heads for 4 query heads) and
    folds the chunks' masked calls; forced to the torch reference it runs transformers' SDPA: same tokens."""
    folded = []
    real = ga.grouped_sdpa
    monkeypatch.setattr(ga, "grouped_sdpa", lambda *a: folded.append(a[0].shape) or real(*a))
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    grouped = load_model(tiny_checkpoints[family])
    ours, stats = _answers(grouped, kv)
    assert stats["attention_llm"] == "sdpa_grouped" and stats["attention_vit"] == "sdpa"
    assert folded, "no attention call was folded"
    monkeypatch.setenv(kernels.FORCE_ENV, "torch")
    reference_model = load_model(tiny_checkpoints[family])
    reference, ref_stats = _answers(reference_model, kv)
    assert ref_stats["attention_llm"] == "sdpa"
    assert ours == reference and all(ours)


@pytest.mark.gpu
def test_folded_equals_repeated_on_cuda():
    """On CUDA in bf16 (SDPA's masked kernels there) the fold answers what the repeated form does."""
    q, k, v = (t.cuda().bfloat16() for t in _qkv(heads=12, q_len=6, past=300))
    mask = _chunk_mask(1, 6, 300).cuda()
    ours, _ = ga.grouped_attention_forward(sdpa_attention_forward)(_Attn(6), q, k, v, mask)
    reference, _ = sdpa_attention_forward(_Attn(6), q, k, v, mask)
    torch.testing.assert_close(ours.float(), reference.float(), rtol=0.02, atol=0.02)
