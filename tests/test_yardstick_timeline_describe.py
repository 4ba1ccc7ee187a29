"""Describe examples cut from long timeline scenes (`timeline_describe_share`): the answer names exactly the timeline's
events inside the window, objects there from before are listed and do not "appear", the pixel labels follow the
timeline's tracks, and at share 0 the training data stay what older runs drew."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livevlm import load_model
from livevlm.summary.run import DESCRIBE_PROMPT
from tools.yardstick.batches import Batcher, StepBatches, sample_batch
from tools.yardstick.clips import ClipBank, ClipRange
from tools.yardstick.describe import parse_description
from tools.yardstick.phrasing import parse
from tools.yardstick.recipe import BUNDLED, TrainConfig
from tools.yardstick.timeline import Event, make_timeline
from tools.yardstick.timeline_describe import _SALT, SEED_FLOOR, draw_window, timeline_window, window_tracks
from tools.yardstick.train import parse_args
from tools.yardstick.world import COLOURS, FPS, SHAPES, SPLITS, Track

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIGEST = "d49697a28aa50f11"
"""sha256 prefix of three steps' examples (and the generator after each) of `_cfg()`, drawn by the code before
`timeline_describe_share` existed."""


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(world=2, out="/tmp/unused", batch=6, long_every=0, mix="describe=4", describe_frames_max=64,
                       variety=0.4, **kw)  # fmt: skip


def _expected(event: Event) -> tuple[str, str, str, str]:
    """A timeline event as `parse_description` reads the describe grammar's event."""
    if event.kind == "changes colour":
        return event.colour, event.shape, "turns", str(event.new_colour)
    return event.colour, event.shape, event.kind, ""


def _track_of(tracks: list[Track], e: Event) -> Track:
    """The timeline track whose event `e` is."""
    t = round(e.seconds * FPS)
    marks = {"appears": lambda tr: tr.spans[0][0], "leaves": lambda tr: tr.spans[0][1],
             "changes colour": lambda tr: tr.recolour and tr.recolour[0]}  # fmt: skip
    (tr,) = [tr for tr in tracks if tr.shape == e.shape and marks[e.kind](tr) == t]
    return tr


def _windows(n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """`n` random (timeline seed, seconds, start, frames), seeds apart from the benchmarks' as training draws them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        frames = int(rng.integers(20, 65))
        seconds = int(rng.integers(60, 181))
        out.append((int(rng.integers(SEED_FLOOR, 2**40)), seconds, 2 * int(rng.integers(0, (2 * seconds - frames) // 2 + 1)),
                    frames))  # fmt: skip
    return out


def _check_window(seed: int, seconds: int, start: int, frames: int) -> dict[str, int]:
    """Assert the window's answer against the timeline's events and tracks; count what it held."""
    tracks, events = make_timeline(seconds, seed)
    ex = timeline_window(seed, seconds, start, frames)
    got = parse_description(ex.answer)
    assert got.well_formed, ex.answer
    inside = [e for e in events if start < round(e.seconds * FPS) < start + frames]  # strictly inside
    assert got.events == [_expected(e) for e in inside], (ex.answer, inside)
    seen = [tr for tr in tracks if any(max(a, start) < min(b, start + frames) for a, b in tr.spans)]
    listed = sorted((max(tr.spans[0][0], start), SHAPES.index(tr.shape), list(COLOURS).index(tr.colour_at(
        max(tr.spans[0][0], start)))) for tr in seen)  # the grammar's order: first seen, then shape, then colour
    assert got.objects == [(list(COLOURS)[c], SHAPES[s]) for _, s, c in listed]
    there = [tr for tr in tracks if tr.visible(start)]  # on screen at the window's first frame
    appears = [(c, s) for c, s, verb, _ in got.events if verb == "appears"]
    for tr in there:  # listed, and no "appears" is its (only later objects of its colour and shape may appear)
        key = (tr.colour_at(start), tr.shape)
        later = [o for o in seen if o.spans[0][0] > start and (o.colour, o.shape) == key]
        assert key in got.objects and appears.count(key) == len(later)
    stays = [tr for tr in there if tr.visible(start + frames - 1)]
    return {"there": len(there), "stays": len(stays), "events": len(inside),
            "hidden_before": sum(e.seconds * FPS <= start for e in events)}  # fmt: skip


def test_a_window_describes_exactly_the_timeline_events_inside_it() -> None:
    totals = dict.fromkeys(("there", "stays", "events", "hidden_before"), 0)
    for window in _windows(60):
        for k, v in _check_window(*window).items():
            totals[k] += v
    assert totals["there"] >= 60 and totals["stays"] >= 40 and totals["events"] >= 40 and totals["hidden_before"]


def test_events_on_the_window_edges_are_no_events() -> None:
    """An event on the window's first frame is how things are (listed as it is then, no "appears" or "turns"); one on
    the frame just past its end has not happened (listed as it was, no "leaves")."""
    kinds = set()
    for seed in range(SEED_FLOOR, SEED_FLOOR + 12):
        tracks, events = make_timeline(120, seed)
        for e in events[1:4]:
            t = round(e.seconds * FPS)
            for start, frames in ((t, 24), (t - 30, 30)):  # the event on the first frame; just past the last
                _check_window(seed, 120, start, frames)  # (no event for it: only those strictly inside)
                objects = parse_description(timeline_window(seed, 120, start, frames).answer).objects
                tr = _track_of(tracks, e)
                if start == t:  # as things are from then on: "appears" and "turns" objects listed as they are now
                    assert ((tr.colour_at(t), e.shape) in objects) == (e.kind != "leaves")
                else:  # as things were before: what leaves or turns is listed, what appears is not
                    shown = (tr.colour_at(max(start, tr.spans[0][0])), e.shape)
                    assert (shown in objects) == (e.kind != "appears")
            assert all(tr.recolour is None or tr.recolour[0] > 0 for tr in window_tracks(tracks, t, 24))
            kinds.add(e.kind)
    assert kinds == {"appears", "leaves", "changes colour"}


def test_the_pixel_labels_follow_the_timeline_tracks() -> None:
    visible = labelled = 0
    for seed, seconds, start, frames in _windows(12, seed=1):
        tracks, _ = make_timeline(seconds, seed)
        ex = timeline_window(seed, seconds, start, frames, variety=0.5)
        assert ex.labels.shape[0] == frames == ex.num_frames
        for t in range(frames):
            drawn = {(int(c), int(s)) for c, s in np.unique(ex.labels[t].reshape(-1, 2), axis=0) if s >= 0}
            truth = {(list(COLOURS).index(tr.colour_at(start + t)), SHAPES.index(tr.shape))
                     for tr in tracks if tr.visible(start + t)}  # fmt: skip
            assert drawn <= truth, (seed, start, t)
            visible, labelled = visible + len(truth), labelled + len(drawn)
    assert labelled >= 0.95 * visible  # drawn where visible (now and then one hides another)


def test_windows_are_drawn_and_worded_as_every_v2_describe_clip() -> None:
    frames = np.random.default_rng(0).integers(0, 255, size=(8, 48, 64, 3), dtype=np.uint8)
    footage = ClipRange("synthetic", (0.0, 1.0), frames, 8.0, tuple(i / 8 for i in range(8)))
    bank = ClipBank({s: [footage] for s in SPLITS}, share=1.0)
    rng = np.random.default_rng(3)
    examples = [draw_window(rng, 64, bank, variety=1.0) for _ in range(16)]
    assert all(ex.style.kind == "clip" for ex in examples)  # footage backgrounds
    assert len({ex.frames.shape[1:3] for ex in examples}) >= 3  # the v2 styles' (and variety's) frame sizes
    assert len({ex.question for ex in examples}) >= 3 and all(parse(ex.question).kind == "describe" for ex in examples)
    assert all(ex.qtype == "describe" and ex.seed[1] == _SALT and ex.seed[2] >= SEED_FLOOR for ex in examples)
    assert all(20 <= ex.num_frames <= 64 for ex in examples)
    assert all(parse_description(ex.answer).well_formed for ex in examples)
    again = draw_window(np.random.default_rng(3), 64, bank, variety=1.0)
    assert np.array_equal(again.frames, examples[0].frames) and again.answer == examples[0].answer


def test_the_share_is_checked_and_a_command_line_flag() -> None:
    with pytest.raises(ValueError, match="world 2"):
        TrainConfig(timeline_describe_share=0.5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"timeline_describe_share must be in \[0, 1\]"):
            _cfg(timeline_describe_share=bad)
    cfg = parse_args(["--world", "2", "--out", "/tmp/x", "--timeline-describe-share", "0.25"])
    assert cfg.timeline_describe_share == 0.25 and TrainConfig().timeline_describe_share == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--world", "2", "--out", "/tmp/x", "--timeline-describe-share", "2"])


def _digest(cfg: TrainConfig) -> str:
    total = hashlib.sha256()
    for step in range(3):
        rng = np.random.default_rng([cfg.seed, step])
        for ex in sample_batch(rng, step, cfg):
            one = hashlib.sha256(ex.frames.tobytes() + ex.labels.tobytes())
            one.update(repr((ex.question, ex.answer, ex.qtype, ex.seed, ex.extra)).encode())
            total.update(one.hexdigest()[:16].encode())
        total.update(repr(rng.random()).encode())  # the generator's state after the batch
    return total.hexdigest()[:16]


def test_share_zero_draws_what_older_runs_drew() -> None:
    assert _digest(_cfg()) == _digest(_cfg(timeline_describe_share=0.0)) == SAMPLE_DIGEST
    assert _digest(_cfg(timeline_describe_share=0.5)) != SAMPLE_DIGEST


def test_windows_in_a_training_batch_take_the_timed_prompt_and_give_every_token_a_target() -> None:
    adapter = load_model(BUNDLED)
    cfg = _cfg(timeline_describe_share=1.0, timed_describe_share=1.0, session_layout=True, stream_offset_share=0.5)
    examples = sample_batch(np.random.default_rng([cfg.seed, 0]), 0, cfg)
    describes = [ex for ex in examples if ex.qtype == "describe"]
    assert describes and all(ex.seed[1] == _SALT for ex in describes)
    batch = StepBatches(Batcher(adapter), cfg)[0]
    texts = [adapter.tokenizer.decode(ids) for ids in batch["input_ids"]]
    assert sum(DESCRIBE_PROMPT.split("{")[0] in t for t in texts) == len(describes)
    assert batch["token_targets"].shape[0] == int((batch["input_ids"] == adapter.video_token_id).sum())
    assert batch["attn_about"].any(dim=1).all()


def test_a_short_run_with_timeline_windows_trains(tmp_path: Path) -> None:
    out = tmp_path / "timeline"
    cmd = [sys.executable, "-m", "tools.yardstick.train", "--world", "2", "--steps", "2", "--batch", "2",
           "--long-every", "0", "--mix", "describe=6", "--eval-every", "2", "--eval-per-type", "1", "--tower-steps",
           "0", "--polish-steps", "0", "--threads", "1", "--session-layout", "--init", BUNDLED, "--vocab-from",
           BUNDLED, "--timeline-describe-share", "0.5", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and '"timeline_describe_share": 0.5' in (out / "train_log.json").read_text()
