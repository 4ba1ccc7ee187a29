"""The summarize benchmark's long timelines drawn by the independent generator of `_foreign_world.py`.

The events are the world's (`tools.yardstick.timeline.make_timeline`: the same objects appear, leave and change
colour at the same seconds); the pixels are not: each object is drawn by `_foreign_world`'s code (anti-aliased,
tilted, its own paths and rims) in one quarter of the frame that no other object on screen holds, over the
condition's background (dark, light, mid-grey shade or undimmed footage) at one of its frame sizes. So a model
that summarizes the world's timeline but not this one learned the world's drawing, not the task.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path as FsPath

import av
import numpy as np
from _foreign_world import CONDITIONS, TICK, Backdrop, Footage, Path, _coverage, make_sprite

from tools.yardstick.timeline import Event, events_path, make_timeline
from tools.yardstick.world import FPS, Track

TIMELINE_CONDITIONS = ("dark", "light", "midgrey", "footage")
"""Conditions a timeline can be drawn in (the others change sizes or rates the timeline fixes)."""


def _quarters(tracks: list[Track], rng: np.random.Generator) -> list[int]:
    """A quarter of the frame (0-3) per track such that no two tracks on screen at once share one."""
    taken: list[list[tuple[int, int]]] = [[] for _ in range(4)]  # spans held per quarter
    out = []
    for tr in tracks:
        free = [q for q in range(4) if not any(a < e and s < b for a, b in tr.spans for s, e in taken[q])]
        q = free[int(rng.integers(len(free)))]  # at most three on screen: a quarter is always free
        taken[q].extend(tr.spans)
        out.append(q)
    return out


def draw_timeline(tracks: list[Track], frames: int, condition: str, seed: int,
                  footage: Footage | None = None) -> np.ndarray:  # fmt: skip
    """(frames, H, W, 3) uint8: `tracks` drawn in `condition` (one frame per world frame, 1 / FPS seconds)."""
    if condition not in TIMELINE_CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(TIMELINE_CONDITIONS)}, got {condition!r}")
    cond = CONDITIONS[condition]
    rng = np.random.default_rng([seed, zlib.crc32(condition.encode()), 0x71E])
    w, h = cond.sizes[int(rng.integers(len(cond.sizes)))]
    backdrop = Backdrop(rng, cond.background, (w, h), footage)
    cells = [(x, y, x + w / 2, y + h / 2) for x in (0.0, w / 2) for y in (0.0, h / 2)]
    rim_kind, rim_width = int(rng.integers(3)), float(rng.uniform(1.0, 2.0))
    sprites = []
    for tr, q in zip(tracks, _quarters(tracks, rng)):
        sprite, free, _ = make_sprite(rng, tr.shape, cells[q], cond, (w, h), rim_kind, rim_width)
        sprite.paths = [Path.draw(rng, free, (a * TICK, b * TICK), False) for a, b in tr.spans]
        sprites.append(sprite)
    out = np.empty((frames, h, w, 3), np.uint8)
    for j in range(frames):
        seconds, frame = j / FPS, backdrop.at(j / FPS)
        for tr, sprite in zip(tracks, sprites):
            span = next((k for k, (a, b) in enumerate(tr.spans) if a <= j < b), None)
            if span is None:
                continue
            cx, cy = sprite.paths[span].at(seconds)
            m = sprite.radius + (sprite.rim[1] if sprite.rim else 0.0) + 2
            box = (max(0, math.floor(cx - m)), max(0, math.floor(cy - m)), min(w, math.ceil(cx + m)),
                   min(h, math.ceil(cy + m)))  # fmt: skip
            patch = frame[box[1] : box[3], box[0] : box[2]]
            if sprite.rim is not None:
                alpha = _coverage(tr.shape, cx, cy, sprite.radius, sprite.angle, sprite.rim[1], box)
                patch[:] = patch * (1 - alpha) + sprite.rim[0] * alpha
            alpha = _coverage(tr.shape, cx, cy, sprite.radius, sprite.angle, 0.0, box)
            patch[:] = patch * (1 - alpha) + sprite.rgb[tr.colour_at(j)] * alpha
        out[j] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return out


def write_foreign_video(
    path: str | FsPath, seconds: float, seed: int, condition: str, crf: int = 12
) -> list[Event]:
    """`tools.yardstick.timeline.write_video`'s timeline drawn in `condition`: H.264 mp4 at `FPS` and the events
    beside it; returns the events."""
    path = FsPath(path)
    tracks, events = make_timeline(seconds, seed)
    footage = Footage() if condition == "footage" else None
    frames = draw_timeline(tracks, round(seconds * FPS), condition, seed, footage)
    rate = Fraction(FPS).limit_denominator(1000)
    with av.open(str(path), "w") as dst:
        stream = dst.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast", "g": str(int(4 * FPS))}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts, frame.time_base = i, 1 / rate
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    meta = {"seconds": seconds, "seed": seed, "fps": FPS, "drawn": f"foreign:{condition}",
            "events": [asdict(e) for e in events]}  # fmt: skip
    events_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    return events
