"""The yardstick: the procedural world, its training script, and the bundled model it produced."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from livevlm import Session, SessionConfig, load_model
from livevlm.models.loading import default_model_path
from tools.yardstick.batches import Batcher, _names, pick_turns, sample_batch
from tools.yardstick.evaluate import answer_example
from tools.yardstick.losses import (
    AuxHeads,
    attention_loss,
    attention_target,
    batch_vision_attention,
    token_targets,
)
from tools.yardstick.model import build_config, build_tokenizer
from tools.yardstick.train import TrainConfig, parse_args, train
from tools.yardstick.world import (
    COLOURS,
    NEEDLE_TEST_FRAMES,
    NUMBERS,
    QUESTION_TYPES,
    SHAPES,
    make_example,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def yardstick():
    """The bundled default model, loaded in float32 through the normal path (no special casing)."""
    return load_model(None, dtype="float32")


# -- the world ------------------------------------------------------------------------------------------
def test_examples_are_reproducible_and_splits_differ() -> None:
    a, b = make_example("test", 3, "colour"), make_example("test", 3, "colour")
    assert np.array_equal(a.frames, b.frames) and a.question == b.question and a.answer == b.answer
    other = make_example("train", 3, "colour")
    assert not np.array_equal(a.frames[0], other.frames[0])
    with pytest.raises(ValueError, match="unknown split"):
        make_example("dev", 0)
    with pytest.raises(ValueError, match="unknown question type"):
        make_example("test", 0, "weather")


def _target(example) -> tuple[int, int]:
    words = example.question.rstrip("?").split()
    return list(COLOURS).index(words[-3]), SHAPES.index(words[-2])


def test_answers_agree_with_the_rendered_pixels() -> None:
    for i in range(40):
        ex = make_example("val", i, "count")  # appearances = visible runs of the target in the pixel labels
        colour, shape = _target(ex)
        seen = ((ex.labels[..., 0] == colour) & (ex.labels[..., 1] == shape)).any(axis=(1, 2))
        runs = int(seen[0]) + int((seen[1:] & ~seen[:-1]).sum())
        assert NUMBERS[runs] == ex.answer
        ex = make_example("val", i, "colour")  # the asked-about shape is drawn in the answer's colour
        shape = SHAPES.index(ex.question.rstrip("?").split()[-1])
        drawn = ex.labels[..., 0][ex.labels[..., 1] == shape]
        assert drawn.size and np.bincount(drawn).argmax() == list(COLOURS).index(ex.answer)
        ex = make_example("val", i, "needle")  # a brief event, far back in a long stream
        shape = SHAPES.index(ex.question.split()[-3])
        visible = np.flatnonzero((ex.labels[..., 1] == shape).any(axis=(1, 2)))
        assert NEEDLE_TEST_FRAMES[0] <= ex.num_frames <= NEEDLE_TEST_FRAMES[1]
        assert 1 <= len(visible) <= 3 and visible[-1] < ex.num_frames // 2


def test_extra_questions_agree_with_the_rendered_pixels() -> None:
    checked = 0
    for qtype in QUESTION_TYPES:
        for i in range(12):
            ex = make_example("val", i, qtype, needle_frames=(16, 64))
            assert all(q != ex.question for q, _ in ex.extra)
            for question, answer in ex.extra:
                words = question.rstrip("?").split()
                colour_of, shape_of = ex.labels[..., 0], ex.labels[..., 1]
                if question.startswith("What colour is the") and words[-2:] in (
                    ["the", "start"],
                    ["the", "end"],
                ):
                    frame = 0 if words[-1] == "start" else -1  # the colour drawn on the first / last frame
                    drawn = colour_of[frame][shape_of[frame] == SHAPES.index(words[-4])]
                    assert np.bincount(drawn).argmax() == list(COLOURS).index(answer), question
                elif question.startswith("What shape is visible"):
                    frame = 0 if words[-1] == "start" else -1
                    assert set(shape_of[frame][shape_of[frame] >= 0].tolist()) == {SHAPES.index(answer)}
                elif question.startswith("What colour is the"):  # every pixel of that shape has one colour
                    drawn = colour_of[shape_of == SHAPES.index(words[-1])]
                    assert set(drawn.tolist()) == {list(COLOURS).index(answer)}, question
                else:  # "What shape is the <colour> object?": every pixel of that colour belongs to one shape
                    assert question.startswith("What shape is the"), question
                    drawn = shape_of[colour_of == list(COLOURS).index(words[-2])]
                    assert set(drawn.tolist()) == {SHAPES.index(answer)}, question
                checked += 1
    assert checked > 100


def test_extra_turns_never_repeat_what_was_said() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        ex = make_example("train", i, None, needle_frames=(16, 64))
        turns = pick_turns(ex, rng, 3)
        assert len(turns) <= 3 and set(turns) <= set(ex.extra)
        said = _names(f"{ex.question} {ex.answer}")
        for question, answer in turns:  # each turn names an object or value not yet in the text
            assert not _names(f"{question} {answer}") <= said
            said |= _names(f"{question} {answer}")


def test_count_clip_length_does_not_give_the_answer_away() -> None:
    lengths = {n: [] for n in NUMBERS[1:]}
    for i in range(150):
        ex = make_example("train", i, "count")
        lengths[ex.answer].append(ex.num_frames)
    means = [np.mean(v) for v in lengths.values()]
    assert max(means) - min(means) < 2.0  # frames are drawn before the appearances are laid out


def test_tokenizer_has_qwen_special_tokens_and_whole_words() -> None:
    tok = build_tokenizer()
    assert (
        tok.convert_tokens_to_ids("<|endoftext|>") == 0 and tok.convert_tokens_to_ids("<|video_pad|>") == 13
    )
    for word in [*COLOURS, *SHAPES, *NUMBERS]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    text = "Which appears first, the red circle or the blue square?"
    assert tok.decode(tok(text).input_ids) == text
    assert tok.decode(tok("anything at all, even émoji 🙂").input_ids) == "anything at all, even émoji 🙂"


def test_token_targets_follow_the_merged_token_grid() -> None:
    ex = make_example("train", 0, "colour")
    targets = token_targets(ex.labels)
    chunks = -(-ex.num_frames // 2)
    assert targets.shape == (chunks * 9, 2)
    assert set(targets[:, 0].tolist()) <= set(range(len(COLOURS) + 1))
    assert (targets[:, 0] < len(COLOURS)).any() and (targets[:, 0] == len(COLOURS)).any()


def test_attention_targets_are_the_tokens_the_question_is_about() -> None:
    for i in range(10):
        ex = make_example("val", i, "colour")  # every targeted token shows the asked-about shape
        tt = token_targets(ex.labels)
        about = attention_target(ex.question, tt, 9)
        shape = SHAPES.index(ex.question.rstrip("?").split()[-1])
        assert about.any() and bool((tt[about, 1] == shape).all())
        assert int(about.sum()) == int((tt[:, 1] == shape).sum())
        for qtype in (
            "order",
            "when",
        ):  # one temporal chunk: where the first of them shows / the start or end
            ex = make_example("val", i, qtype)
            about = attention_target(ex.question, token_targets(ex.labels), 9).view(-1, 9)
            chunks = about.any(dim=1).nonzero().squeeze(1).tolist()
            assert len(chunks) <= 1
            if chunks and ex.question.endswith("start?"):
                assert chunks[0] <= 1
    assert not attention_target("What colour is the circle?", torch.tensor([[0, 1]] * 9), 9).any()


def test_word_space_aux_heads_score_visual_tokens_against_the_words_that_name_them() -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    embedding = torch.nn.Embedding(build_config(tokenizer).text_config.vocab_size, 256)
    torch.nn.init.normal_(embedding.weight, std=0.02)  # the model's initializer_range
    heads = AuxHeads(256, (embedding, tokenizer))
    ids = tokenizer(["green", " green", "cross", " cross"], add_special_tokens=False).input_ids
    green, cross = (embedding.weight[ids[i][0]] + embedding.weight[ids[i + 1][0]] for i in (0, 2))
    colour, shape = heads.logits(torch.stack([green, cross]).detach())
    assert int(colour[0].argmax()) == list(COLOURS).index("green")
    assert int(shape[1].argmax()) == SHAPES.index("cross")
    # the loss moves the word embeddings too (both sides align), and only the rows of the words it scores
    heads(0.02 * torch.randn(4, 256), torch.tensor([[0, 1]] * 4)).backward()
    moved = embedding.weight.grad.abs().sum(1).nonzero().squeeze(1)
    words = [form for w in (*COLOURS, *SHAPES) for form in (w, f" {w}")]
    named = {i for word in tokenizer(words, add_special_tokens=False).input_ids for i in word}
    assert set(moved.tolist()) == named


def test_cosine_aux_heads_score_the_token_direction_with_a_fixed_scale() -> None:
    torch.manual_seed(0)
    heads = AuxHeads(256, cosine=10.0)
    tokens = torch.randn(5, 256)
    colour, shape = heads.logits(tokens)
    assert colour.shape == (5, len(COLOURS) + 1) and shape.shape == (5, len(SHAPES) + 1)
    assert colour.abs().max() <= 10.0 and shape.abs().max() <= 10.0  # bias starts at 0: |cos| <= 1
    # only the direction counts: a louder token scores the same, so a class cannot hide in a quiet direction
    assert torch.allclose(heads.logits(7.0 * tokens)[1], shape, atol=1e-5)
    # a token along a class vector scores that class highest
    along = heads.shape.weight[2].detach().clone()
    assert int(heads.logits(along[None])[1].argmax()) == 2
    with pytest.raises(ValueError, match="not both"):
        AuxHeads(256, (torch.nn.Embedding(8, 256), build_tokenizer()), cosine=10.0)


@pytest.mark.parametrize("grids", [[[4, 6, 6], [2, 6, 6]], [[1, 6, 6], [1, 4, 4]]])
def test_batched_vision_attention_is_transformers_maths(grids) -> None:
    """Same features and same gradients as transformers' per-sequence loop (equal-length sequences are batched;
    unequal ones fall back to the loop)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(build_config(build_tokenizer())).float()
    grid = torch.tensor(grids)
    pixels = torch.randn(int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    runs = []
    for batched in (False, True):
        if batched:
            batch_vision_attention(model)
        model.zero_grad()
        features = model.model.visual(pixels, grid_thw=grid).pooler_output
        (features**2).sum().backward()
        runs.append([features.detach(), *(p.grad.clone() for p in model.model.visual.parameters())])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*runs))


def test_training_flags_parse_into_the_config() -> None:
    assert parse_args([]) == TrainConfig()
    cfg = parse_args(["--steps", "7", "--aux-words", "--attn-weight", "0.5"])
    assert (cfg.steps, cfg.aux_words, cfg.attn_weight) == (7, True, 0.5)
    assert parse_args(["--no-aux-words"]).aux_words is False


def test_question_mix_weights_the_short_batches_and_the_uniform_draws_stay_the_base_runs() -> None:
    weighted = TrainConfig(batch=60, mix="count=5, shape=0")
    types = [ex.qtype for step in (0, 1) for ex in sample_batch(np.random.default_rng(step), step, weighted)]
    assert "shape" not in types and types.count("count") > 0.35 * len(types)  # expected 0.5 of 120
    # no mix: the same (type, index) draws as before the knob existed, so the base run still reproduces
    rng, expected = np.random.default_rng([0, 0]), []
    for _ in range(4):
        qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
        expected.append(make_example("train", int(rng.integers(2**40)), qtype, needle_frames=(16, 64)).seed)
    uniform = sample_batch(np.random.default_rng([0, 0]), 0, TrainConfig(batch=4))
    assert [ex.seed for ex in uniform] == expected
    for bad, words in (
        ("cnt=2", "not a question type"),
        ("count=x", "not a number"),
        ("count=-1", "negative"),
    ):
        with pytest.raises(ValueError, match=words):
            TrainConfig(mix=bad)
        with pytest.raises(ValueError, match=words):
            TrainConfig(polish_mix=bad)
    TrainConfig(polish_mix="cnt=2", polish_steps=0)  # no polish stage, nothing to refuse
    with pytest.raises(ValueError, match="polish_steps"):
        TrainConfig(polish_steps=-1)
    assert parse_args(["--mix", "count=3,colour=2"]).type_weights()[2] == pytest.approx(3 / 9)


# -- training -------------------------------------------------------------------------------------------
def test_training_script_saves_a_checkpoint_the_normal_loader_and_session_use(tmp_path: Path) -> None:
    out = tmp_path / "ys"
    cfg = TrainConfig(
        out=str(out),
        steps=2,
        batch=2,
        long_batch=1,
        long_every=2,
        eval_every=2,
        eval_per_type=1,
        attn_weight=1.0,
        tower_steps=2,
        polish_steps=1,
    )
    log = train(cfg)  # the attention-supervision path trains with eager attention and saves sdpa's config
    assert [p["step"] for p in log["curve"]] == [1] and set(log["curve"][0]["val"]) >= set(QUESTION_TYPES)
    assert json.loads((out / "train_log.json").read_text()) == log
    assert math.isfinite(log["base"]["tower_aux_loss"])  # the tower-only stage ran first
    assert [p["step"] for p in log["base"]["curve"]] == [2]  # then the base run, then the polish stage
    assert log["base"]["config"]["polish_steps"] == 0 and log["config"] == asdict(cfg)
    adapter = load_model(out)
    assert (adapter.geometry.min_pixels, adapter.geometry.max_pixels) == (84 * 84, 84 * 84)
    result = answer_example(adapter, make_example("test", 0, "shape"), SessionConfig())
    assert result.visual_tokens == 9 * -(-result.frames // 2)  # frames stay at 84 x 84: 3 x 3 tokens a chunk


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same seed, same machine: bit-identical weights (what lets a clean checkout reproduce the bundled model),
    whether batches are rendered in the training process or in worker processes."""
    from safetensors.torch import load_file

    weights = []
    for run, workers in (("a", 0), ("b", 2)):
        cfg = TrainConfig(
            out=str(tmp_path / run),
            steps=3,
            batch=2,
            long_batch=1,
            long_every=3,
            eval_per_type=1,
            workers=workers,
            tower_steps=2,
            polish_steps=1,
        )
        train(cfg)
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_training_layout_gives_the_session_logits(tiny_adapters) -> None:
    """One HF forward over the training layout == the Session's chunked prefill (video at M-RoPE positions)."""
    adapter = tiny_adapters[
        "qwen2_5_vl"
    ]  # random weights drawn wide: every position shift changes the logits
    batcher = Batcher(adapter)
    for qtype in QUESTION_TYPES[:5]:
        ex = make_example("test", 1, qtype)
        ex = replace(ex, frames=ex.frames[:7])  # an odd frame count: the last temporal patch is padded
        batch = batcher([ex])
        n_answer = int((batch["labels"][0] != -100).sum())
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            want = adapter.model(**inputs).logits[0, -n_answer - 1].float()
        with Session(adapter) as session:
            for i, frame in enumerate(ex.frames):
                session.push(frame, pts_seconds=i / 2.0)
            first = next(iter(session.ask_ids(ex.question, max_new_tokens=1)))
        assert first == int(want.argmax()), qtype


def test_extra_turns_follow_the_session_layout_and_every_answer_is_a_target(tiny_adapters) -> None:
    adapter = tiny_adapters["qwen2_5_vl"]
    batcher, tok = Batcher(adapter), adapter.tokenizer
    ex = make_example("train", 4, "colour")
    turns = ex.extra[:2]
    assert len(turns) == 2
    alone, more = batcher([ex]), batcher([ex], extra=[turns])
    n = alone["input_ids"].shape[1]
    assert torch.equal(more["input_ids"][0, :n], alone["input_ids"][0])  # the first turn is the Session's
    targets = more["labels"][0][more["labels"][0] != -100]
    assert tok.decode(targets) == "".join(f"{a}<|im_end|>" for a in [ex.answer] + [a for _, a in turns])
    text = tok.decode(more["input_ids"][0, n:])
    assert text == "".join(
        f"\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>" for q, a in turns
    )


def test_attention_supervision_covers_every_answer_turn(yardstick) -> None:
    """With `all_turns`, one supervised row per answer: its query predicts that answer's first token and its
    targets are the visual tokens of that turn's question; without, the first answer only (same row)."""
    adapter = yardstick  # 84 x 84 frames: 9 visual tokens per temporal patch, as the targets assume
    batcher, tok = Batcher(adapter), adapter.tokenizer
    examples = [make_example("train", i, "colour") for i in (4, 5)]
    turns = [ex.extra[:2] for ex in examples]
    first = batcher(examples, targets=True, extra=turns, attention=True)
    every = batcher(examples, targets=True, extra=turns, attention=True, all_turns=True)
    assert first["attn_row"].tolist() == [0, 1]
    assert every["attn_row"].tolist() == [0] * (1 + len(turns[0])) + [1] * (1 + len(turns[1]))
    ids, video = every["input_ids"], adapter.video_token_id
    for k, (row, query) in enumerate(zip(every["attn_row"].tolist(), every["attn_query"].tolist())):
        ex, j = examples[row], k - (0 if row == 0 else 1 + len(turns[0]))
        question, answer = [(ex.question, ex.answer), *turns[row]][j]
        assert tok.decode(ids[row, query - 4 : query + 1]).endswith("<|im_start|>assistant\n")
        assert tok.decode(every["labels"][row, query + 1]) == tok.decode(tok(answer).input_ids[0])
        about = every["attn_about"][k]
        tt = token_targets(ex.labels)
        want = attention_target(question, tt, len(tt) // -(-ex.num_frames // 2))
        assert about[ids[row] != video].sum() == 0 and torch.equal(about[ids[row] == video], want)
    for key in ("attn_query", "attn_about"):  # the first answer's row is the same either way
        assert torch.equal(every[key][[0, 1 + len(turns[0])]], first[key])
    # the loss: -log of head 0's mass on the targets, in the last two layers, at each row's query
    length = ids.shape[1]
    attn = torch.full((2, 3, length, length), 1e-9)
    attn[0, 0, :, 0] = attn[1, 0, :, 1] = 1.0  # head 0 looks at token 0 in sequence 0, token 1 in sequence 1
    about = torch.zeros(3, length, dtype=torch.bool)
    about[0, 0] = about[1, 0] = about[2, 2] = True
    row, query = torch.tensor([0, 0, 1]), torch.tensor([5, 6, 5])
    loss = attention_loss((attn, attn, attn), row, query, about)
    missed = -math.log(1e-9 + 1e-6)  # row 2, in both layers; rows 0 and 1 put all their mass on target
    assert loss == pytest.approx(2 * missed / 6, rel=1e-4)


# -- the bundled model ----------------------------------------------------------------------------------
CHAIN = ("yardstick-v1", "yardstick-v2-warm", "yardstick-v2-second", "yardstick-v2-layout-candidate",
         "yardstick-v2-long-describe", "yardstick-v2-more-count", "yardstick-v2-mix", "yardstick-v2-variety",
         "yardstick-v2-timeline", "yardstick-v2-composed", "yardstick-v2-timeline-heavy-rerun")  # fmt: skip
"""The runs before the bundled one, in order, their logs in benchmarks/results/ as `<name>-train_log.json`."""
COPIED = {"/tmp/ys-bundled": "/tmp/ys-v2b", "/tmp/ys-v2d-init": "/tmp/ys-v2d", "/tmp/ys-v2f-init": "/tmp/ys-v2e",
          "/tmp/ys-v2g-init": "/tmp/ys-v2f", "/tmp/ys-v2h-init": "/tmp/ys-v2g", "/tmp/ys-v2j-init": "/tmp/ys-v2h",
          "/tmp/ys-v2k-init": "/tmp/ys-v2j", "/tmp/ys-v2l-init": "/tmp/ys-v2k", "/tmp/ys-da-init": "/tmp/ys-v2l"}  # fmt: skip
"""Runs that started from a copy of the run before (the copy's folder: that run's output folder; train.py's docstring)."""


def test_bundled_default_is_the_trained_yardstick(yardstick) -> None:
    path = default_model_path()
    assert (path / "model.safetensors").stat().st_size < 12_000_000  # a few MB, committed
    assert yardstick.model.config.model_type == "qwen2_5_vl"
    # runs in a chain, each log written by tools/yardstick/train.py: v1 from the script's defaults (world 1), then
    # world-2 runs, each warm-started from the one before in v1's vocabulary; the later ones at the Session's layout
    logs = [json.loads((RESULTS / f"{name}-train_log.json").read_text()) for name in CHAIN]
    logs.append(json.loads((path / "train_log.json").read_text()))
    v1 = logs[0]
    defaults = asdict(TrainConfig())
    assert {k: defaults[k] for k in v1["config"]} == v1["config"]
    new = {"world", "v1_share", "background_clips", "background_share", "background_bank", "vocab_from",
           "session_layout", "stream_offset_share", "stream_offset_max", "timed_describe_share",
           "describe_frames_max", "phrase_noise", "phrase_noise_skip", "variety", "timeline_describe_share",
           "composed_wordings", "describe_attention"}  # fmt: skip
    assert set(defaults) - set(v1["config"]) == new  # made before world 2 existed
    assert defaults["world"] == 1
    assert logs[1]["config"]["init"] == logs[1]["config"]["vocab_from"] == "livevlm/assets/yardstick"  # v1, then
    for before, after in itertools.pairwise(logs[1:]):
        init = after["config"]["init"]
        assert after["config"]["vocab_from"] == init and COPIED.get(init, init) == before["config"]["out"]
    for log in logs:
        base = log.get("base", log)  # a run with a polish stage logs its base run apart
        assert base["curve"][-1]["step"] == log["config"]["steps"]
        assert log["curve"][-1]["step"] == (log["config"]["polish_steps"] if "base" in log else log["config"]["steps"])
    for log in logs[1:]:
        assert log["config"]["world"] == 2 and log["config"]["tower_steps"] == 0
    assert logs[-1]["config"]["session_layout"]  # answers trained where a Session decodes them (#20)
    assert logs[-1]["config"]["variety"] > 0  # clips drawn as other generators draw them too (light, undimmed, small)
    assert logs[-1]["config"]["timeline_describe_share"] > 0  # describe clips cut from long scenes, as summarize's
    assert logs[-1]["config"]["composed_wordings"] > 0  # questions in hundreds of wordings, not a dozen sentences
    assert logs[-1]["config"]["describe_attention"]  # every clause of a description pulled onto where it happens


def test_accuracy_benchmark_subset(tmp_path: Path) -> None:
    out = tmp_path / "acc.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "accuracy.py"),
        "--per-type",
        "2",
        "--types",
        "colour,shape",
        "--settings",
        "prune:temporal:0.5,vit:lossless,kv:bilevel,prune:dedup:1.0:threshold=0,kv:fastv:keep_ratio=1.0",
        "--out",
        str(out),
        "--quiet",
        "--answers",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert list(report["settings"]) == [
        "baseline", "prune:temporal:0.5", "vit:lossless", "kv:bilevel", "prune:dedup:1.0:threshold=0",
        "kv:fastv:keep_ratio=1.0",
    ]  # fmt: skip
    base, pruned = report["settings"]["baseline"], report["settings"]["prune:temporal:0.5"]
    assert base["n"] == 4 and base["ratios"]["kept_tokens"] == 1.0
    assert pruned["ratios"]["kept_tokens"] < 0.6  # half the tokens (rounded up per chunk) entered the LLM
    assert report["settings"]["vit:lossless"]["accuracy"] == base["accuracy"]  # lossless is exact
    for lossless in ("prune:dedup:1.0:threshold=0", "kv:fastv:keep_ratio=1.0"):  # knobs reach the configs
        assert [a["reply"] for a in report["settings"][lossless]["answers"]] == [a["reply"] for a in base["answers"]]
    assert report["split"] == "test" and report["flags"]["per_type"] == 2 and "--per-type 2" in report["command"]
    assert "| baseline |" in res.stdout


def test_tower_stage_trains_the_vision_tower_and_leaves_the_llm_alone() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from livevlm.models.qwen_vl import QwenVLAdapter
    from tools.yardstick.batches import StepBatches
    from tools.yardstick.checkpoint import Control, Run
    from tools.yardstick.model import build_config, build_tokenizer
    from tools.yardstick.train import Stage, train_tower

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer)).float().train()
    batcher = Batcher(QwenVLAdapter(model, tokenizer, min_pixels=84 * 84, max_pixels=84 * 84))
    cfg = TrainConfig(batch=2, long_batch=1, long_every=3, tower_steps=3)
    aux = AuxHeads(model.config.vision_config.out_hidden_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train_tower(Stage(cfg, model, aux, {}), batcher, Run(Control(), asdict(cfg), cfg.out, ""))
    after = model.state_dict()
    assert math.isfinite(loss)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".visual." in f".{k}" for k in changed)
    assert any("merger" in k for k in changed)  # the tokens the LLM reads are trained too
    # the tower stage draws other data than the main stage for the same step
    main = StepBatches(batcher, cfg)[0]["pixel_values_videos"]
    tower = StepBatches(batcher, cfg, stage=1)[0]["pixel_values_videos"]
    assert main.shape != tower.shape or not torch.equal(main, tower)
