"""Attention targets for every clause of a describe answer (`describe_attention`): each clause is placed at the chunk
where the timeline puts its object or event, at the token that starts it, and the option is off unless asked for."""

from __future__ import annotations

import pytest

from livevlm import load_model
from tools.yardstick.batches import Batcher, StepBatches
from tools.yardstick.describe import parse_description
from tools.yardstick.describe_attention import clause_masks, clause_rows, clauses, token_objects
from tools.yardstick.recipe import BUNDLED, TrainConfig
from tools.yardstick.timeline import make_timeline
from tools.yardstick.timeline_describe import timeline_window, window_tracks
from tools.yardstick.train import parse_args


def _expected_chunks(seed: int, start: int, frames: int) -> list[int]:
    """The chunk of each clause after the first of the window's answer, from its tracks (not its pixels)."""
    tracks = window_tracks(make_timeline(120, seed)[0], start, frames)
    ex = timeline_window(seed, 120, start, frames)
    out = []
    for _, words in clauses(ex.answer)[1:]:
        colour, shape, *rest = words
        track = next(t for t in tracks if t.shape == shape and colour in (t.colour, *(t.recolour or ())))
        a, b = track.spans[0]
        if rest in ([], ["appears"]):
            out.append(a // 2)
        elif rest == ["leaves"]:
            out.append((b - 1) // 2)
        else:
            out.append(track.recolour[0] // 2)
    return out


def test_clauses_are_split_at_their_first_character() -> None:
    answer = "red circle, blue square; blue square leaves, red circle turns green"
    got = [(answer[i : i + 4], words) for i, words in clauses(answer)]
    assert got == [("red ", ["red", "circle"]), ("blue", ["blue", "square"]), ("blue", ["blue", "square", "leaves"]),
                   ("red ", ["red", "circle", "turns", "green"])]  # fmt: skip


@pytest.mark.parametrize("seed", [2**20 + 1, 2**20 + 7, 2**20 + 11])
def test_every_clause_is_placed_where_the_timeline_has_its_event(seed: int) -> None:
    start, frames = 40, 64
    ex = timeline_window(seed, 120, start, frames)
    assert parse_description(ex.answer).events, ex.answer  # these windows hold events
    masks = clause_masks(ex.answer, token_objects(ex.labels))
    chunks = [int(m.view(frames // 2, -1).any(dim=1).nonzero()[0]) for _, m in masks]
    assert len(masks) == len(clauses(ex.answer)) - 1
    assert chunks == _expected_chunks(seed, start, frames)
    assert all(m.view(frames // 2, -1).any(dim=1).sum() == 1 for _, m in masks)  # one chunk each


def test_a_clause_row_points_at_the_token_that_starts_the_clause() -> None:
    adapter = load_model(BUNDLED)
    ex = timeline_window(2**20 + 7, 120, 40, 64)

    def encode(text: str) -> list[int]:
        return list(adapter.tokenizer(text, add_special_tokens=False).input_ids)

    tokens = encode(ex.answer)
    rows = clause_rows(ex.answer, tokens, token_objects(ex.labels), encode)
    assert len(rows) == len(clauses(ex.answer)) - 1
    for (index, _), (_, words) in zip(rows, clauses(ex.answer)[1:]):
        assert adapter.tokenizer.decode(tokens[index:]).strip().startswith(" ".join(words))


def test_batches_carry_a_row_per_clause_only_when_asked() -> None:
    adapter = load_model(BUNDLED)
    kw = {"world": 2, "out": "/tmp/unused", "batch": 4, "long_every": 0, "mix": "describe=4",
          "timeline_describe_share": 1.0, "session_layout": True}
    plain = StepBatches(Batcher(adapter), TrainConfig(**kw))[0]
    rows = StepBatches(Batcher(adapter), TrainConfig(**kw, describe_attention=True))[0]
    assert len(plain["attn_row"]) == 4  # the answers' first tokens
    assert len(rows["attn_row"]) > 8
    assert rows["attn_about"].any(dim=1).all()
    assert (rows["attn_query"] < rows["labels"].shape[1]).all()
    answer_first = (rows["labels"] != -100).float().argmax(dim=1)
    assert (rows["attn_query"] >= answer_first[rows["attn_row"]] - 1).all()  # inside the answer
    for key in ("input_ids", "labels", "token_targets"):
        assert (plain[key] == rows[key]).all()  # the same data, more supervision


def test_the_option_is_a_flag_and_needs_the_attention_loss() -> None:
    assert parse_args(["--world", "2", "--out", "/tmp/x", "--describe-attention"]).describe_attention
    assert not parse_args(["--world", "2", "--out", "/tmp/x"]).describe_attention
    with pytest.raises(ValueError, match="attn_weight"):
        TrainConfig(world=2, out="/tmp/x", describe_attention=True, attn_weight=0.0)
