"""The yardstick world v2 (#20): wordings with a held-out set, the describe target, the varied renderer, and the
training switch; v1 examples stay exactly as the bundled model's benchmarks made them."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from livevlm import SessionConfig, load_model
from livevlm.models.preprocess import smart_resize
from livevlm.stream.sampler import Sampler
from tools.yardstick.batches import Batcher, StepBatches, sample_batch
from tools.yardstick.describe import parse_description, score_description
from tools.yardstick.evaluate import answer_example
from tools.yardstick.losses import attention_target, token_targets
from tools.yardstick.model import build_tokenizer
from tools.yardstick.phrasing import KIND_WORDS, TEMPLATES, filler_words, parse, perturb, templates
from tools.yardstick.recipe import BUNDLED, TrainConfig
from tools.yardstick.render_v2 import NEAR_SQUARE, SIDES, Style, label_size, render_v2
from tools.yardstick.train import train
from tools.yardstick.world import COLOURS, FRAME_SIZE, QUESTION_TYPES, SHAPES, Track, make_example
from tools.yardstick.world_v2 import QUESTION_TYPES_V2, _order_v2, _when_v2, corpus_lines_v2

V1_DIGEST = "dd43f97db2e7d26d"
"""sha256 prefix of 42 v1 examples (pixels, labels, questions, answers, seeds) before v2 existed."""


def test_v1_examples_are_unchanged() -> None:
    total = hashlib.sha256()
    for split in ("train", "val", "test"):
        for qtype in (*QUESTION_TYPES, None):
            for i in (0, 7):
                ex = make_example(split, i, qtype, needle_frames=(16, 40) if split == "train" else None)
                one = hashlib.sha256(ex.frames.tobytes() + ex.labels.tobytes())
                one.update(repr((ex.question, ex.answer, ex.qtype, ex.seed, ex.extra)).encode())
                total.update(one.hexdigest()[:16].encode())
    assert total.hexdigest()[:16] == V1_DIGEST


def test_v2_examples_are_reproducible_and_differ_from_v1() -> None:
    for qtype in QUESTION_TYPES_V2:
        a, b = (make_example("val", 5, qtype, version=2, needle_frames=(16, 40)) for _ in range(2))
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
        assert (a.question, a.answer, a.extra) == (b.question, b.answer, b.extra)
        assert a.labels.shape[1:3] == (FRAME_SIZE, FRAME_SIZE)
    v1, v2 = make_example("val", 5, "colour"), make_example("val", 5, "colour", version=2)
    assert v1.seed != v2.seed
    with pytest.raises(ValueError, match="world version"):
        make_example("val", 0, "colour", version=3)
    with pytest.raises(ValueError, match="unknown question type"):
        make_example("val", 0, "weather", version=2)
    with pytest.raises(ValueError, match="phrasing pool"):
        make_example("val", 0, "colour", phrasing="poetic")


def test_every_type_has_five_wordings_in_both_spellings_and_a_disjoint_held_out_set() -> None:
    for kind, (seen, held_out) in TEMPLATES.items():
        assert len(seen) >= 5 and len(held_out) >= 2 and not set(seen) & set(held_out), kind
        if kind in ("colour", "when_colour", "needle"):
            for group in (seen, held_out):  # US and UK spelling, on both sides of the split
                assert any("colour" in t for t in group) and any(
                    "color" in t.replace("colour", "") for t in group
                )
        for template in (*seen, *held_out):  # every wording reads back into its slots
            filled = template.format(shape="cross", colour="red", obj="red cross", a="red cross", b="blue circle",
                                     at="end")  # fmt: skip
            read = parse(filled)  # ... and into its own template, not another one that also matches
            assert (read.kind, read.template, read.held_out) == (kind, template, template in held_out)
    assert templates("colour", "canonical") == ("What colour is the {shape}?",)
    with pytest.raises(ValueError, match="not a yardstick question"):
        parse("What is the weather?")


def test_held_out_wordings_never_reach_training() -> None:
    for version in (1, 2):
        for i in range(60):
            ex = make_example("train", i, None, needle_frames=(16, 40), version=version, phrasing="seen")
            assert not any(parse(q).held_out for q in (ex.question, *(q for q, _ in ex.extra)))
    for cfg in (TrainConfig(world=2, out="/tmp/x", batch=24),):
        for step in range(4):
            for ex in sample_batch(np.random.default_rng([0, step]), step, cfg):
                assert not any(parse(q).held_out for q in (ex.question, *(q for q, _ in ex.extra)))
    with pytest.raises(ValueError, match="never used in the training split"):
        make_example("train", 0, "colour", version=2, phrasing="held_out")
    corpus = "\n".join(corpus_lines_v2())  # nor the tokenizer's corpus
    assert not any(parse(line).held_out for line in corpus.split("\n") if line.endswith(("?", ".")))


def test_held_out_examples_are_the_same_clips_in_other_words() -> None:
    for version in (1, 2):
        for qtype in ("colour", "count", "order", "when", "needle"):
            seen = make_example("test", 2, qtype, version=version, phrasing="seen", needle_frames=(16, 40))
            held = make_example(
                "test", 2, qtype, version=version, phrasing="held_out", needle_frames=(16, 40)
            )
            assert np.array_equal(seen.frames, held.frames) and seen.answer == held.answer
            assert parse(held.question).held_out and parse(held.question).slots == parse(seen.question).slots


def test_descriptions_parse_and_agree_with_the_pixels() -> None:
    checked = 0
    for i in range(30):
        for qtype in QUESTION_TYPES_V2:
            ex = make_example("val", i, qtype, version=2, needle_frames=(16, 40))
            answers = (
                [ex.answer]
                if qtype == "describe"
                else [a for q, a in ex.extra if parse(q).kind == "describe"]
            )
            assert len(answers) == 1
            got = parse_description(answers[0])
            assert got.well_formed and score_description(answers[0], answers[0])["object_recall"] == 1.0
            drawn = {SHAPES[s] for s in np.unique(ex.labels[..., 1]) if s >= 0}
            assert drawn <= {shape for _, shape in got.objects}  # every drawn object is named
            first_verb: dict[str, str] = {}
            for _, shape, verb, _ in got.events:
                first_verb.setdefault(shape, verb)
            for shape, verb in first_verb.items():  # what first "appears" was not there on the first frame
                if verb == "appears":
                    assert not (ex.labels[0, ..., 1] == SHAPES.index(shape)).any(), answers[0]
            checked += 1
    assert checked == 30 * len(QUESTION_TYPES_V2)


def test_description_scores() -> None:
    truth = "red circle, blue square, green cross; green cross appears, blue square turns yellow"
    reply = "red circle, blue square; blue square turns yellow"
    s = score_description(reply, truth)
    assert s["object_recall"] == pytest.approx(2 / 3) and s["object_precision"] == 1.0
    assert s["event_recall"] == 0.5 and s["event_precision"] == 1.0 and s["events_in_order"] == 0.0
    bad = score_description("", truth)
    assert bad["object_recall"] == 0.0 and bad["well_formed"] == 0.0
    assert score_description("red circle, a dog", truth)["well_formed"] == 0.0
    with pytest.raises(ValueError, match="grammar"):
        score_description(truth, "a dog")


def test_source_rate_clips_sample_back_to_the_training_frames() -> None:
    rates, sizes = set(), set()
    for i in range(12):
        full = make_example("val", i, "order", version=2, source_frames=True)
        kept = make_example("val", i, "order", version=2)
        sampler = Sampler(2.0)
        picked = [f for j, f in enumerate(full.frames) if sampler.keep(j / full.fps)]
        assert np.array_equal(np.stack(picked), kept.frames) and np.array_equal(full.labels, kept.labels)
        rates.add(full.fps)
        sizes.add(full.frames.shape[1:3])
    assert len(rates) >= 3 and len(sizes) >= 3
    for size in [(s, s) for s in SIDES] + list(
        NEAR_SQUARE
    ):  # every size is one 3 x 3 token grid for the model
        assert smart_resize(*size, 28, FRAME_SIZE**2, FRAME_SIZE**2) == (FRAME_SIZE, FRAME_SIZE)


def test_attention_targets_read_any_wording() -> None:
    for i in range(12):
        ex = make_example("val", i, "colour", version=2, phrasing="held_out" if i % 2 else "seen")
        tt = token_targets(ex.labels)
        shape = SHAPES.index(parse(ex.question).slots["shape"])
        about = attention_target(ex.question, tt, 9)
        assert about.any() and bool((tt[about, 1] == shape).all())
    ex = make_example("val", 0, "when", version=2)
    about = attention_target(ex.question, token_targets(ex.labels), 9).view(-1, 9)
    assert about.any(dim=1).sum() <= 1  # one temporal chunk: the start or the end
    assert attention_target("Describe the video.", torch.tensor([[0, 1], [6, 4]]), 1).tolist() == [
        True,
        False,
    ]


def test_world_two_training_config() -> None:
    with pytest.raises(ValueError, match="bundled"):
        TrainConfig(world=2, out=BUNDLED)
    with pytest.raises(ValueError, match="world"):
        TrainConfig(world=3, out="/tmp/x")
    with pytest.raises(ValueError, match="not a question type"):
        TrainConfig(mix="describe=2")  # world 1 has no describe type
    with pytest.raises(ValueError, match="v1_share"):
        TrainConfig(world=2, out="/tmp/x", v1_share=1.5)
    cfg = TrainConfig(world=2, out="/tmp/x", batch=40, mix="describe=3", v1_share=0.5)
    batch = sample_batch(np.random.default_rng(0), 0, cfg)
    types = [ex.qtype for ex in batch]
    assert types.count("describe") >= 8 and all(t in QUESTION_TYPES_V2 for t in types)
    v1 = [
        ex for ex in batch if len(ex.seed) == 3
    ]  # v1 clips (3-part seeds), in seen wordings; descriptions are v2
    assert 4 <= len(v1) < len(batch) and all(ex.qtype != "describe" for ex in v1)
    tok = build_tokenizer(world=2)
    for word in [*COLOURS, *SHAPES, "color", "appears", "leaves", "turns"]:
        assert len(tok(f" {word}", add_special_tokens=False).input_ids) == 1, word


def test_world_two_training_run_saves_a_model_the_session_answers_with(tmp_path: Path) -> None:
    out = tmp_path / "v2"
    cfg = TrainConfig(out=str(out), world=2, steps=1, batch=2, long_batch=1, long_every=0, eval_every=1,
                      eval_per_type=1, tower_steps=0, polish_steps=0, threads=1)  # fmt: skip
    log = train(cfg)
    point = log["curve"][-1]
    assert set(point["val"]) == set(point["val_held_out"]) == {*QUESTION_TYPES_V2, "overall"}
    adapter = load_model(out)
    ex = make_example("test", 0, "describe", version=2, source_frames=True)
    result = answer_example(adapter, ex, SessionConfig())
    assert (
        result.frames == ex.labels.shape[0] and result.describe is not None
    )  # sampled to 2 fps, then scored


def test_a_world_two_run_warm_started_from_the_bundled_model_keeps_its_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer.json"):
        TrainConfig(world=2, out=str(tmp_path / "x"), vocab_from=str(tmp_path))
    out = tmp_path / "warm"
    cfg = TrainConfig(out=str(out), world=2, steps=1, batch=2, long_batch=1, long_every=0, eval_every=1,
                      eval_per_type=1, tower_steps=0, polish_steps=0, threads=1, init=BUNDLED,
                      vocab_from=BUNDLED)  # fmt: skip
    train(cfg)
    bundled = load_model(BUNDLED)
    warm = load_model(out)
    assert warm.tokenizer.get_vocab() == bundled.tokenizer.get_vocab()
    assert warm.tokenizer.get_vocab() != build_tokenizer(world=2).get_vocab()
    # the run started from the bundled weights: one small step leaves the embeddings close to them, not random
    before = bundled.model.get_input_embeddings().weight.float()
    after = warm.model.get_input_embeddings().weight.float()
    assert after.shape == before.shape
    assert torch.nn.functional.cosine_similarity(before, after, dim=1).mean() > 0.9
    ex = make_example("test", 0, "colour", version=2, source_frames=True)
    assert answer_example(warm, ex, SessionConfig()).frames == ex.labels.shape[0]


def test_order_clips_can_start_with_a_third_object_and_when_clips_can_hold_still() -> None:
    rng = np.random.default_rng(0)
    orders = [_order_v2(rng) for _ in range(200)]
    with_third = [o for o in orders if len(o[0]) == 3]
    assert 60 <= len(with_third) <= 140 and all(len(o[0]) in (2, 3) for o in orders)
    for tracks, _frames, q, a in with_third:
        distractor, *asked = tracks
        other = f"{distractor.colour} {distractor.shape}"
        assert other not in q and a in q  # never asked about; the answer is still one of the two named
        assert distractor.spans[0][0] == 0 <= min(t.spans[0][0] for t in asked)  # there before (or with) both
        assert len({t.shape for t in tracks}) == len({t.colour for t in tracks}) == 3
    whens = [_when_v2(rng) for _ in range(200)]
    steady = [w for w in whens if len(w[0]) == 1 and w[0][0].recolour is None]
    assert 30 <= len(steady) <= 90
    for (track,), frames, q, a in steady:
        assert a == (track.colour if q.startswith("What colour") else track.shape)
        assert track.spans == [(0, frames)]


def _content(text: str) -> list[str]:
    words = [w.strip("?.,:!").lower() for w in text.split()]
    return [w for w in words if w in KIND_WORDS or w in COLOURS or w in SHAPES]


def test_phrase_noise_edits_one_filler_word_and_keeps_what_the_question_asks() -> None:
    rng, fillers = np.random.default_rng(0), filler_words()
    assert fillers and not set(fillers) & (KIND_WORDS | set(COLOURS) | set(SHAPES))
    slots = {"shape": "circle", "colour": "red", "obj": "red circle", "a": "red circle", "b": "blue square",
             "at": "start"}  # fmt: skip
    changed = 0
    for kind in TEMPLATES:
        for template in templates(kind, "seen"):
            question = template.format(**slots)
            for _ in range(20):
                noisy = perturb(question, rng, fillers)
                assert _content(noisy) == _content(question), (question, noisy)
                assert abs(len(noisy.split()) - len(question.split())) <= 1
                changed += noisy != question
    assert changed > 0.9 * 20 * sum(len(templates(k, "seen")) for k in TEMPLATES)


def test_phrase_noise_changes_what_the_model_reads_not_what_it_is_taught() -> None:
    """With `phrase_noise` the question tokens change; the answers and attention targets follow the true
    question (a perturbed one does not parse), and at 0 the batches are the earlier runs' (no draw made)."""
    adapter = load_model(BUNDLED)
    base = TrainConfig(world=2, out="/tmp/x", batch=6, session_layout=True, attn_weight=0.5)
    plain = StepBatches(Batcher(adapter), base)[3]
    noisy = StepBatches(Batcher(adapter), replace(base, phrase_noise=1.0))[3]
    assert plain["input_ids"].shape != noisy["input_ids"].shape or not torch.equal(plain["input_ids"], noisy["input_ids"])

    def answers(batch):
        return [row[row != -100].tolist() for row in batch["labels"]]

    assert answers(plain) == answers(noisy)
    assert plain["attn_about"].any()
    assert [m.nonzero().tolist() for m in plain["attn_about"]] == [m.nonzero().tolist() for m in noisy["attn_about"]]
    assert torch.equal(plain["token_targets"], noisy["token_targets"])
    again = StepBatches(Batcher(adapter), replace(base, phrase_noise=0.0))[3]
    assert torch.equal(again["input_ids"], plain["input_ids"])
    every_type = replace(base, phrase_noise=1.0, phrase_noise_skip=",".join(QUESTION_TYPES_V2))
    assert torch.equal(StepBatches(Batcher(adapter), every_type)[3]["input_ids"], plain["input_ids"])


V2_DIGEST = "713709c4f3dde820"
"""sha256 prefix of 28 v2 examples (no footage) before `variety` existed: at 0 it draws nothing."""


def test_variety_zero_leaves_the_v2_world_as_it_was() -> None:
    total = hashlib.sha256()
    for split in ("train", "val"):
        for qtype in QUESTION_TYPES_V2:
            for i in (0, 3):
                ex = make_example(split, i, qtype, needle_frames=(16, 40), version=2, variety=0.0)
                one = hashlib.sha256(ex.frames.tobytes() + ex.labels.tobytes())
                one.update(repr((ex.question, ex.answer, ex.qtype, ex.seed, ex.extra)).encode())
                total.update(one.hexdigest()[:16].encode())
    assert total.hexdigest()[:16] == V2_DIGEST
    with pytest.raises(ValueError, match="variety needs --world 2"):
        TrainConfig(variety=0.5)
    with pytest.raises(ValueError, match=r"variety must be in \[0, 1\]"):
        TrainConfig(world=2, out="/tmp/x", variety=1.5)


def test_variety_draws_light_backgrounds_small_objects_and_wide_frames_whose_labels_match_the_pixels() -> None:
    """`variety` redraws clips as other generators draw them; the pixel labels (and so the aux and attention
    targets) still say what is drawn where, at the grid the model's preprocessing gives a wide frame."""
    bright = wide = small = 0
    for i in range(40):
        ex = make_example("train", i, "colour", version=2, variety=1.0)
        frames, labels = ex.frames, ex.labels
        h, w = frames.shape[1:3]
        assert labels.shape[1:3] == label_size(h, w)
        rows = ((np.arange(labels.shape[1]) + 0.5) * h / labels.shape[1]).astype(int)
        cols = ((np.arange(labels.shape[2]) + 0.5) * w / labels.shape[2]).astype(int)
        seen = frames[:, rows][:, :, cols].astype(int)
        colour = labels[..., 0]
        for c, rgb in enumerate(COLOURS.values()):  # each labelled pixel shows its object's colour (jitter: +-12)
            if (colour == c).any():
                assert np.median(np.abs(seen[colour == c] - rgb).max(-1)) <= 20
        background = seen[colour < 0]
        bright += background.mean() > 130
        wide += labels.shape[1] != labels.shape[2]
        area = (colour[0] >= 0).sum() / colour[0].size
        small += 0 < area < 0.01
    assert bright >= 10 and wide >= 6 and small >= 2
    circle = Track("circle", 12.0, "red", [(0, 2)], (42.0, 42.0), (0.0, 0.0))
    plain = Style(2.0, (90, 160), None, 1.0, "plain", 0.0)
    for true_aspect, ratio in ((True, 1.0), (False, 160 / 90)):  # round in pixels, or the world's square stretched
        pixels, _ = render_v2([circle], 2, replace(plain, true_aspect=true_aspect), np.random.default_rng(0), False)
        ys, xs = np.nonzero((pixels[0, ..., 0].astype(int) - pixels[0, ..., 1]) > 100)
        assert (np.ptp(xs) + 1) / (np.ptp(ys) + 1) == pytest.approx(ratio, rel=0.1)


def test_variety_batches_give_every_visual_token_a_target() -> None:
    """A 16:9 frame is 2 x 4 tokens a chunk, not the world's 3 x 3: the token and attention targets follow."""
    adapter = load_model(BUNDLED)
    cfg = TrainConfig(world=2, out="/tmp/x", batch=8, long_every=0, session_layout=True, variety=1.0)
    for step in range(3):
        batch = StepBatches(Batcher(adapter), cfg)[step]
        video = int((batch["input_ids"] == adapter.video_token_id).sum())
        assert batch["token_targets"].shape[0] == video
        assert batch["attn_about"].shape[1] == batch["input_ids"].shape[1]
    examples = sample_batch(np.random.default_rng([cfg.seed, 1]), 1, cfg)
    assert len({ex.labels.shape[1:3] for ex in examples}) >= 2
