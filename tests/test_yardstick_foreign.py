"""benchmarks/yardstick_foreign.py: the yardstick task on clips from an independent generator, per condition.

The clips' ground truth is checked from what was drawn (the pixels at each object, the frames each is on), never
from the generator's own answer; the script runs end to end at its smallest size. Accuracy is never asserted.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.yardstick.describe import describe, parse_description
from tools.yardstick.phrasing import parse, templates
from tools.yardstick.world import COLOURS, NUMBERS, Track

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
from _foreign_world import CONDITIONS, TYPES, Footage, draw_clip, make_scene

ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
"""As a contributor runs a script: no PYTHONPATH (livevlm installed, the checkout's tools/ found by the script)."""
PALETTE = np.array(list(COLOURS.values()), np.float64)


def bench(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "yardstick_foreign.py"), *flags], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def footage() -> Footage:
    return Footage()


def test_the_generator_takes_only_the_task_from_the_world() -> None:
    """Independent drawing: from tools/yardstick only the vocabulary and the wordings, no world drawing code."""
    tree = ast.parse((BENCH / "_foreign_world.py").read_text())
    taken = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
             and n.module.startswith("tools") for a in n.names}  # fmt: skip
    assert taken <= {("tools.yardstick.world", w) for w in ("COLOURS", "SHAPES", "NUMBERS")} | {
        ("tools.yardstick.phrasing", "templates")}  # fmt: skip


def test_descriptions_follow_the_worlds_grammar() -> None:
    """The generator's own description of a scene is the one the world's `describe` writes for the same objects
    and spans (ticks are the world's frames)."""
    for i in range(300):
        scene = make_scene(5, "describe", i)
        tracks = [Track(t.shape, 1.0, t.colour, t.spans, (0.0, 0.0), (0.0, 0.0), t.recolour) for t in scene.things]
        assert scene.answer == describe(tracks, scene.ticks)


def _runs(flags: list[bool]) -> int:
    return sum(1 for k, on in enumerate(flags) if on and (k == 0 or not flags[k - 1]))


def _truth_answer(clip) -> str:
    """The answer read back from what was drawn on each frame (`Clip.truth`), by the question's own slots."""
    asked, truth = parse(clip.scene.question), clip.truth
    slots, kind = asked.slots, asked.kind
    if kind == "colour":
        (colour,) = {c for seen in truth for _, c, s, *_ in seen if s == slots["shape"]}
        return colour
    if kind == "shape":
        (shape,) = {s for seen in truth for _, c, s, *_ in seen if c == slots["colour"]}
        return shape
    if kind == "count":
        return NUMBERS[_runs([any(f"{c} {s}" == slots["obj"] for _, c, s, *_ in seen) for seen in truth])]
    if kind == "order":
        first = {o: min(j for j, seen in enumerate(truth) if any(f"{c} {s}" == o for _, c, s, *_ in seen))
                 for o in (slots["a"], slots["b"])}  # fmt: skip
        assert first[slots["a"]] != first[slots["b"]]
        return min(first, key=first.get)
    seen = truth[0 if slots.get("at") == "start" else -1]
    if kind == "when_colour":
        (colour,) = {c for _, c, s, *_ in seen if s == slots["shape"]}
        return colour
    if kind == "when_shape":
        (shape,) = {s for _, c, s, *_ in seen}
        return shape
    if kind == "needle":
        on = [j for j, seen in enumerate(truth) if any(s == slots["shape"] for _, c, s, *_ in seen)]
        assert 1 <= len(on) <= math.ceil(1.5 * clip.fps) and on[-1] - on[0] < len(on)  # a flash: 1-1.5 s
        assert on[0] < len(truth) / 2  # in the first half of the stream
        (colour,) = {c for j in on for _, c, s, *_ in truth[j] if s == slots["shape"]}
        return colour
    raise AssertionError(f"unexpected kind {kind}")


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_drawn_clips_show_their_answer(name: str, footage: Footage) -> None:
    """Every type, two scenes: the answer follows from the frames; each visible object's pixels have its colour;
    objects never overlap, are never under 4 px across and never share colour and shape; the same seed draws the
    same clip; the shade backgrounds have their condition's brightness."""
    cond = CONDITIONS[name]
    for qtype in TYPES:
        for i in range(2):
            scene = make_scene(3, qtype, i)
            clip = draw_clip(scene, name, 3, i, footage)
            t, h, w, _ = clip.frames.shape
            assert clip.frames.dtype == np.uint8 and (w, h) in cond.sizes and clip.fps == cond.fps
            assert t == len(clip.truth) == math.ceil(scene.ticks * 0.5 * cond.fps - 1e-9)
            wording = templates(parse(scene.question).kind, "canonical")[0]
            assert (scene.wording == "canonical") == (parse(scene.question).template == wording)
            assert parse(scene.question).held_out == (scene.wording == "held_out")
            if qtype == "describe":
                want = parse_description(scene.answer)
                assert want.well_formed
                firsts = {}
                for seen in clip.truth:
                    for k, c, s, *_ in seen:
                        firsts.setdefault(k, (c, s))
                assert sorted(want.objects) == sorted(firsts.values())
            else:
                assert _truth_answer(clip) == scene.answer, scene.question
            for frame, seen in zip(clip.frames, clip.truth):
                pairs = [(c, s) for _, c, s, *_ in seen]
                assert len(set(pairs)) == len(pairs) == len({s for _, s in pairs})
                for a, (_, _, _, xa, ya, ra) in enumerate(seen):
                    assert 2 * ra >= 4
                    for _, _, _, xb, yb, rb in seen[a + 1 :]:
                        assert math.hypot(xa - xb, ya - yb) > ra + rb
                for _, colour, _, x, y, r in seen:
                    if not (r <= x <= w - r and r <= y <= h - r):
                        continue  # still entering from an edge
                    cy, cx = round(y - 0.5), round(x - 0.5)  # the pixel whose centre is nearest the object's
                    near = frame[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].reshape(-1, 3).astype(np.float64)
                    dist = np.linalg.norm(near[:, None] - PALETTE[None], axis=-1)
                    nearest = [list(COLOURS)[k] for k in dist.argmin(1)]
                    assert colour in nearest and dist[:, list(COLOURS).index(colour)].min() < 60, (qtype, i, colour)
            again = draw_clip(make_scene(3, qtype, i), name, 3, i, footage)
            assert np.array_equal(again.frames, clip.frames)
            if cond.background == "light":
                assert clip.background_level >= 160
            elif cond.background == "dark":
                assert clip.background_level <= 95


def test_small_run_writes_accuracy_per_condition_and_type(tmp_path: Path) -> None:
    out = tmp_path / "foreign.json"
    flags = ["--per-condition", "1", "--conditions", "footage", "--answers", "--out", str(out)]
    done = bench(*flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| condition |" in done.stdout and "| footage |" in done.stdout, done.stdout[-2000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "yardstick_foreign"
    assert shlex.split(result["command"]) == ["python", "benchmarks/yardstick_foreign.py", *flags]
    assert result["flags"]["conditions"] == ["dark", "footage"]  # the control is added
    assert result["machine"]["cpu"]["simd_flags"] is not None and result["model"] == "bundled yardstick"
    assert list(result["conditions"]) == ["dark", "footage"]
    for name, entry in result["conditions"].items():
        assert entry["n"] == len(TYPES) and len(entry["rows"]) == len(TYPES)
        assert set(entry["accuracy"]) == {*TYPES, "overall"}
        assert all(0.0 <= a <= 1.0 for a in entry["accuracy"].values())
        assert set(entry["by_wording"]) == {"canonical", "held_out"}
        assert sum(e["n"] for e in entry["by_template"].values()) == len(TYPES)
        assert {parse(r["question"]).template for r in entry["rows"]} == set(entry["by_template"])
        assert set(entry["describe"]) >= {"object_recall", "event_recall", "well_formed"}
        for row in entry["rows"]:
            assert isinstance(row["reply"], str) and isinstance(row["correct"], bool)
            assert row["question"] == make_scene(0, row["qtype"], row["index"]).question
        assert entry["vs_dark"] is None or name != "dark" or entry["vs_dark"] == 1.0
    assert set(result["overall"]["accuracy"]) == {*TYPES, "overall"} and result["overall"]["n"] == 2 * len(TYPES)
    assert sum(e["n"] for e in result["overall"]["by_template"].values()) == 2 * len(TYPES)


@pytest.mark.parametrize(("flags", "message"), [
    (["--conditions", "dark,bright"], "--conditions: unknown bright"),
    (["--types", "color"], "--types: unknown color"),
    (["--per-condition", "0"], "--per-condition must be at least 1"),
])  # fmt: skip
def test_a_bad_flag_is_one_line_before_any_work(flags: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    done = bench(*flags, "--out", str(out))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Loading weights" not in done.stderr and not out.exists()
