"""benchmarks/_foreign_timeline.py: the summarize benchmark's timelines drawn by the independent generator.

What was drawn is checked from the pixels (each frame shows exactly the colours of the objects on screen, in
quarters no two share), and `summarize_events.py --draw` runs end to end at its smallest size. Recall is never
asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.yardstick.timeline import make_timeline, read_events
from tools.yardstick.world import COLOURS, FPS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
from _foreign_timeline import TIMELINE_CONDITIONS, draw_timeline, write_foreign_video

ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
"""As a contributor runs a script: no PYTHONPATH (livevlm installed, the checkout's tools/ found by the script)."""
PALETTE = np.array(list(COLOURS.values()), np.float64)


def _colours_shown(frame: np.ndarray, quarter: tuple[slice, slice] | None = None) -> set[str]:
    """Palette colours that fill at least 6 pixels of `frame` (or of one quarter of it)."""
    px = frame[quarter] if quarter else frame
    dist = np.linalg.norm(px.reshape(-1, 1, 3).astype(np.float64) - PALETTE[None], axis=2)
    near = (dist < 40).sum(axis=0)
    return {name for name, n in zip(COLOURS, near) if n >= 6}


@pytest.mark.parametrize("condition", ["dark", "light"])
def test_each_frame_shows_the_objects_on_screen_in_their_colours(condition: str) -> None:
    tracks, events = make_timeline(90, seed=5)
    frames = draw_timeline(tracks, round(90 * FPS), condition, seed=5)
    assert frames.dtype == np.uint8 and frames.shape[0] == 180
    assert any(e.kind == "changes colour" for e in events) and any(e.kind == "leaves" for e in events)
    for j in range(0, len(frames), 3):
        on = {tr.colour_at(j) for tr in tracks if tr.visible(j)}
        assert _colours_shown(frames[j]) == on, (j, condition)


def test_objects_on_screen_together_never_share_a_quarter() -> None:
    tracks, _ = make_timeline(120, seed=2)
    frames = draw_timeline(tracks, round(120 * FPS), "midgrey", seed=2)
    h, w = frames.shape[1:3]
    quarters = [(slice(y, y + h // 2), slice(x, x + w // 2)) for x in (0, w // 2) for y in (0, h // 2)]
    for j in range(0, len(frames), 5):
        on = [tr.colour_at(j) for tr in tracks if tr.visible(j)]
        per_quarter = [_colours_shown(frames[j], q) for q in quarters]
        assert sorted(c for shown in per_quarter for c in shown) == sorted(on), j  # each in one quarter only


def test_the_same_seed_draws_the_same_frames_and_conditions_differ() -> None:
    tracks, _ = make_timeline(20, seed=1)
    a, b = (draw_timeline(tracks, 40, "light", seed=1) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    dark = draw_timeline(tracks, 40, "dark", seed=1)
    assert a.mean() > dark.mean() + 60  # a light background, not the world's dark one
    with pytest.raises(ValueError, match="condition must be one of"):
        draw_timeline(tracks, 40, "small", seed=1)
    assert set(TIMELINE_CONDITIONS) == {"dark", "light", "midgrey", "footage"}


def test_the_video_carries_the_worlds_events(tmp_path: Path) -> None:
    video = tmp_path / "t.mp4"
    events = write_foreign_video(video, 30, seed=3, condition="light")
    assert read_events(video) == events == make_timeline(30, 3)[1]
    assert json.loads(video.with_name("t.events.json").read_text())["drawn"] == "foreign:light"


def test_summarize_events_runs_on_a_foreign_drawing(tmp_path: Path) -> None:
    out = tmp_path / "drawn.json"
    flags = ["--minutes", "0.2", "--policies", "sink_window", "--segment", "6", "--threads", "1",
             "--draw", "world,foreign:light", "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(BENCH / "summarize_events.py"), *flags], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["drawn"] for r in runs] == ["world", "foreign:light"]
    assert all(r["segments"] == 2 and r["score_chapters"]["events"] >= 0 for r in runs)
    assert "| foreign:light |" in done.stdout
    bad = subprocess.run([sys.executable, str(BENCH / "summarize_events.py"), "--draw", "foreign:small"], cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 2 and "choose from world, foreign:dark" in bad.stderr and "Traceback" not in bad.stderr
