"""Describe examples cut from long scenes: windows of `timeline.make_timeline` scenes, as summarize's segments are.

`livevlm summarize` describes 30 s segments of long videos: objects already on screen when a segment starts (and
staying past its end), events every 8-16 s, objects that appeared long before. The world's own describe clips
(`world_v2._describe_scene`) are short standalone scenes, so a model trained on them alone said "X appears, X leaves"
of an object that was only there. A window here is such a segment:

    make_timeline(seconds, seed) -> window_tracks(tracks, start, frames) -> draw_scene(...) -> describe(...)
    long scene (60-300 s)            frames [start, start + frames) moved     the v2 renderer     the answer
                                     to frame 0: spans clipped, recolour      (styles, footage,
                                     shifted, unseen objects dropped          `variety`)

so an object on screen at the window's first frame is listed and does not "appear", one on screen at its last frame
does not "leave", and a colour change at its first frame is the colour it has. Timeline seeds are drawn from
`SEED_FLOOR` up, apart from the benchmarks' small ones (benchmarks/summarize_events.py uses 0-9).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from tools.yardstick.clips import ClipBank
from tools.yardstick.describe import describe
from tools.yardstick.timeline import make_timeline
from tools.yardstick.world import FPS, FRAME_SIZE, SPLITS, Example, Track
from tools.yardstick.world_v2 import DESCRIBE_QUESTION, draw_scene, reworded

TIMELINE_SECONDS = (60, 300)
"""How long the scene a window is cut from runs (longer when the window needs it)."""
WINDOW_MIN_FRAMES = 20
"""The shortest window (10 s at 2 fps); the longest is the run's `describe_frames_max`."""
SEED_FLOOR = 2**20
"""Timeline seeds of training windows are at least this: the benchmarks' videos use small seeds."""
_SALT = zlib.crc32(b"timeline_describe")


def _moved(p0: float, v: float, t: int, lo: float, hi: float) -> tuple[float, float]:
    """Where a coordinate bouncing off `lo` / `hi` (as `render_v2` moves it) is at frame `t`, and its velocity then."""
    span = hi - lo
    if span <= 0:
        return lo, v
    u = (p0 - lo + v * t) % (2 * span)
    return (lo + u, v) if u <= span else (lo + 2 * span - u, -v)


def window_tracks(tracks: list[Track], start: int, frames: int) -> list[Track]:
    """The objects seen in frames [start, start + frames) of a long scene, as a clip of `frames` frames from frame 0:
    spans clipped to the window, a colour change at or before `start` folded into the colour and one at or after its
    end dropped, position and direction where the motion has them at `start`; objects not seen in it dropped."""
    out = []
    for tr in tracks:
        spans = [(max(a - start, 0), min(b - start, frames)) for a, b in tr.spans]
        spans = [(a, b) for a, b in spans if a < b]
        if not spans:
            continue
        recolour = None
        if tr.recolour is not None and start < tr.recolour[0] < start + frames:
            recolour = (tr.recolour[0] - start, tr.recolour[1])
        lo, hi = tr.radius, FRAME_SIZE - 1 - tr.radius
        (x, vx), (y, vy) = (_moved(tr.xy[k], tr.velocity[k], start, lo, hi) for k in range(2))
        out.append(Track(tr.shape, tr.radius, tr.colour_at(start), spans, (x, y), (vx, vy), recolour))
    return out


def timeline_window(
    seed: int, seconds: int, start: int, frames: int, clips: ClipBank | None = None, variety: float = 0.0
) -> Example:
    """The describe example of frames [start, start + frames) of the `seconds`-long timeline scene `seed` (a training
    example), drawn and worded as every v2 describe clip is (`world_v2.draw_scene`, seen wordings)."""
    if not 0 <= start <= round(seconds * FPS) - frames or frames < 1:
        raise ValueError(f"frames {start}-{start + frames} are not inside a {seconds} s scene")
    tracks, _ = make_timeline(seconds, seed)
    shown = window_tracks(tracks, start, frames)
    key = (SPLITS["train"], _SALT, int(seed), int(seconds), int(start), int(frames), 2)
    scene = (shown, frames, DESCRIBE_QUESTION, describe(shown, frames))
    return reworded(draw_scene("train", key, np.random.default_rng(key), "describe", scene, clips, variety), "seen")


def draw_window(
    rng: np.random.Generator, max_frames: int, clips: ClipBank | None = None, variety: float = 0.0
) -> Example:
    """A random `timeline_window`: `WINDOW_MIN_FRAMES` (or `max_frames`, if fewer) to `max_frames` frames, at an even
    start frame of a scene of `TIMELINE_SECONDS` whose seed is at least `SEED_FLOOR`."""
    frames = int(rng.integers(min(WINDOW_MIN_FRAMES, max_frames), max_frames + 1))
    shortest = max(TIMELINE_SECONDS[0], math.ceil(frames / FPS))
    seconds = int(rng.integers(shortest, max(shortest, TIMELINE_SECONDS[1]) + 1))
    seed = int(rng.integers(SEED_FLOOR, 2**40))
    start = 2 * int(rng.integers(0, (round(seconds * FPS) - frames) // 2 + 1))
    return timeline_window(seed, seconds, start, frames, clips, variety)
