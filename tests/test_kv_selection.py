"""Bounded KV that keeps what matters: the bundled model's needle and count questions through `Session`.

A fixed sample of the yardstick's validation split (needle: a shape flashes for 2-3 frames early in a stream
of 200-260 frames; count: how many shapes appeared). The uncompressed `full` policy is the reference. The
selection as it was before (the question's mean query, one mean key per chunk, every layer choosing, no
memory of salient chunks) lost needles or counts here with earlier models; the defaults must keep what it finds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from livevlm import SessionConfig, load_model
from livevlm.cache import BilevelConfig, RetrievalConfig
from tools.yardstick.evaluate import evaluate
from tools.yardstick.world import example_set

PER_TYPE = 10
BEFORE = {"query": "mean", "key_reps": 0, "score_layers": "all", "memory": 0, "one_pass": False}  # the first wave


@pytest.fixture(scope="module")
def yardstick():
    return load_model(None)


@pytest.fixture(scope="module")
def examples():
    return {t: example_set(PER_TYPE, "val", (t,)) for t in ("needle", "count")}


def correct(adapter, examples, kv) -> int:
    return sum(r.correct for r in evaluate(adapter, examples, SessionConfig(kv=kv)))


@pytest.fixture(scope="module")
def full(yardstick, examples):
    return {t: correct(yardstick, ex, "full") for t, ex in examples.items()}


@pytest.mark.parametrize("config", [BilevelConfig(), RetrievalConfig()], ids=["bilevel", "retrieval"])
def test_bounded_defaults_find_the_needle_and_keep_the_count(yardstick, examples, full, config):
    needle = correct(yardstick, examples["needle"], config)
    count = correct(yardstick, examples["count"], config)
    assert needle >= full["needle"] - 1, (needle, full)
    assert count >= full["count"] - 1, (count, full)


def test_the_defaults_find_what_the_first_waves_selection_finds(yardstick, examples):
    before = replace(BilevelConfig(), **BEFORE)
    lost = {t: correct(yardstick, ex, BilevelConfig()) - correct(yardstick, ex, before) for t, ex in examples.items()}
    # what the first wave's selection loses depends on the model: the v1 yardstick 2 or more answers here (needle
    # and count together), the second v2 model needle 1 / count 0, the one bundled after it needle 1 / count -1
    # (30 needles on val: 28 against 25), the one bundled on 2026-12-02 none (30 needles on val: 28 against 27).
    # The defaults must not lose needles the first wave finds; the count may move by one either way.
    assert lost["needle"] >= 0 and lost["count"] >= -1, lost
