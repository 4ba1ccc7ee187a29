"""A procedural video-QA world: coloured shapes that move, appear, vanish and change colour, with exact answers.

Every example is a pure function of (split, index), so train / validation / test never share a clip and
anyone can regenerate the same benchmark. Frames are uint8 RGB at `FRAME_SIZE`, one per sampled step
(the clip is meant to be watched at `FPS`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tools.yardstick.clips import ClipBank

FRAME_SIZE = 84  # 3 x 3 merged tokens per temporal patch for Qwen-VL (28-pixel factor)
FPS = 2.0
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 190, 55),
    "blue": (45, 75, 235),
    "yellow": (235, 220, 35),
    "purple": (155, 55, 215),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three")
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "order", "when", "needle")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
OUTLINE = (250, 250, 250)
"""Every object is drawn with a 2-pixel light rim: a shape edge that looks the same whatever the object's colour.
Without it a linear patch embedding sees shape only entangled with colour and a small tower learns shapes
several times slower (object-token shape accuracy 0.32 against 0.76 after 500 tower-only steps)."""
OUTLINE_WIDTH = 2.0
NEEDLE_TEST_FRAMES = (200, 260)
"""Needle streams in validation/test are this long (frames); training also sees shorter ones."""


@dataclass
class Track:
    """One object: shape, size, colour per frame span and where it moves; visible only in `spans`."""

    shape: str
    radius: float
    colour: str
    spans: list[tuple[int, int]]
    """Visible on frames [start, end) of each span."""
    xy: tuple[float, float]
    velocity: tuple[float, float]
    recolour: tuple[int, str] | None = None
    """(frame, new colour): the object changes colour from that frame on."""

    def colour_at(self, t: int) -> str:
        if self.recolour is not None and t >= self.recolour[0]:
            return self.recolour[1]
        return self.colour

    def visible(self, t: int) -> bool:
        return any(a <= t < b for a, b in self.spans)


@dataclass
class Example:
    """A clip, one question about it and its exact answer."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB, one frame per 1/FPS seconds."""
    question: str
    answer: str
    qtype: str
    seed: tuple[int, ...] = field(default=())
    labels: np.ndarray | None = None
    """(T, H, W, 2) int8 per pixel: colour index and shape index of the object drawn there, -1 for background
    (the renderer's ground truth, for dense auxiliary supervision while training)."""
    extra: list[tuple[str, str]] = field(default_factory=list)
    """Further (question, answer) pairs that are also true of this clip; training asks them as more turns."""
    fps: float = FPS
    """Frame rate of `frames`: FPS, or a v2 clip's source rate (`source_frames`); `labels` are always at FPS."""
    style: object | None = None
    """v2: the `render_v2.Style` the clip was drawn in (background kind, size, rate); None for v1."""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# -- drawing -----------------------------------------------------------------------------------------
_YY, _XX = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)


def _mask(
    shape: str, cx: float, cy: float, r: float, xx: np.ndarray = _XX, yy: np.ndarray = _YY
) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = 0.82 * r
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":
        top, bottom = -r, 0.8 * r
        half = (dy - top) / (bottom - top) * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, frames: int) -> Iterator[np.ndarray]:
    """Plain grey, or a low-contrast grey texture that may drift (a slowly panning camera)."""
    if rng.random() < 0.4:
        level = rng.integers(0, 90)
        plain = np.full((FRAME_SIZE, FRAME_SIZE, 3), level, np.uint8)
        for _ in range(frames):
            yield plain
        return
    cells = int(rng.integers(3, 9))
    coarse = rng.uniform(15, 105, size=(cells, cells))
    big = np.kron(coarse, np.ones((FRAME_SIZE // cells + 2, FRAME_SIZE // cells + 2)))
    tile = np.tile(big, (2, 2)) + rng.normal(0, 6, size=(big.shape[0] * 2, big.shape[1] * 2))
    tile = np.clip(tile, 0, 120)
    drift = rng.uniform(-1.5, 1.5, size=2) if rng.random() < 0.5 else np.zeros(2)
    span = np.array(big.shape)
    for t in range(frames):
        oy, ox = np.round(drift * t).astype(int) % span
        grey = tile[oy : oy + FRAME_SIZE, ox : ox + FRAME_SIZE]
        yield np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def render(tracks: Sequence[Track], frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw `tracks` over a random background (objects bounce off the edges, each with a light rim); also which
    track owns each pixel (the rim counts as background)."""
    out = np.empty((frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    owner = np.full((frames, FRAME_SIZE, FRAME_SIZE), -1, np.int8)
    pos = [np.array(tr.xy, np.float32) for tr in tracks]
    vel = [np.array(tr.velocity, np.float32) for tr in tracks]
    jitter = [rng.integers(-12, 13, size=3) for _ in tracks]
    for t, bg in enumerate(_background(rng, frames)):
        frame = bg.copy()
        for i, tr in enumerate(tracks):
            if tr.visible(t):
                rgb = np.clip(np.array(COLOURS[tr.colour_at(t)]) + jitter[i], 0, 255).astype(np.uint8)
                mask = _mask(tr.shape, pos[i][0], pos[i][1], tr.radius)
                frame[_mask(tr.shape, pos[i][0], pos[i][1], tr.radius + OUTLINE_WIDTH)] = OUTLINE
                frame[mask] = rgb
                owner[t][mask] = i
            lo, hi = tr.radius, FRAME_SIZE - 1 - tr.radius
            pos[i] += vel[i]
            for k in range(2):
                if not lo <= pos[i][k] <= hi:
                    vel[i][k] = -vel[i][k]
                    pos[i][k] = np.clip(pos[i][k], lo, hi)
        out[t] = frame
    return out, owner


# -- scenes and questions ----------------------------------------------------------------------------
def _track(
    rng: np.random.Generator, shape: str, colour: str, spans: list[tuple[int, int]], speed=2.5
) -> Track:
    r = float(rng.uniform(8.5, 13.0))
    xy = tuple(rng.uniform(r, FRAME_SIZE - 1 - r, size=2).tolist())
    return Track(shape, r, colour, spans, xy, tuple(rng.uniform(-speed, speed, size=2).tolist()))


def _pick(rng: np.random.Generator, items: Sequence[str], k: int) -> list[str]:
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _colour_or_shape(rng: np.random.Generator, qtype: str) -> tuple[list[Track], int, str, str]:
    frames = int(rng.integers(8, 25))
    n = int(rng.integers(1, 4))
    shapes, colours = _pick(rng, SHAPES, n), _pick(rng, list(COLOURS), n)
    tracks = [_track(rng, s, c, [(0, frames)]) for s, c in zip(shapes, colours)][::-1]  # asked-about on top
    if qtype == "colour":
        return tracks, frames, f"What colour is the {shapes[0]}?", colours[0]
    return tracks, frames, f"What shape is the {colours[0]} object?", shapes[0]


def _count(rng: np.random.Generator) -> tuple[list[Track], int, str, str]:
    k = int(rng.integers(1, 4))
    frames = int(
        rng.integers(20, 33)
    )  # drawn before k's layout: the clip's length must not give the count away
    lengths = rng.integers(2, 5, size=k)
    min_gap = 4  # a gap of >= 4 frames leaves a whole temporal patch empty between appearances
    slack = frames - int(lengths.sum()) - min_gap * (k - 1)
    extra = np.diff(np.sort(rng.integers(0, slack + 1, size=k)), prepend=0)  # split the slack at random
    spans, t = [], 0
    for i in range(k):
        t += int(extra[i]) + (min_gap if i else 0)
        spans.append((t, t + int(lengths[i])))
        t += int(lengths[i])
    (shape, other_shape), (colour, other_colour) = _pick(rng, SHAPES, 2), _pick(rng, list(COLOURS), 2)
    tracks = [_track(rng, shape, colour, spans)]
    if rng.random() < 0.7:
        tracks.insert(0, _track(rng, other_shape, other_colour, [(0, frames)]))
    return tracks, frames, f"How many times does the {colour} {shape} appear?", NUMBERS[k]


def _order(rng: np.random.Generator) -> tuple[list[Track], int, str, str]:
    frames = int(rng.integers(12, 25))
    first = int(rng.integers(0, frames // 3))
    second = int(rng.integers(first + 4, frames - 2))
    shapes, colours = _pick(rng, SHAPES, 2), _pick(rng, list(COLOURS), 2)
    end_first = frames if rng.random() < 0.6 else int(rng.integers(first + 2, second + 1))
    tracks = [
        _track(rng, shapes[0], colours[0], [(first, end_first)]),
        _track(rng, shapes[1], colours[1], [(second, frames)]),
    ]
    a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
    q = f"Which appears first, the {colours[a]} {shapes[a]} or the {colours[b]} {shapes[b]}?"
    return tracks, frames, q, f"{colours[0]} {shapes[0]}"


def _when(rng: np.random.Generator) -> tuple[list[Track], int, str, str]:
    frames = int(rng.integers(12, 25))
    change = 2 * int(rng.integers(frames // 4, 3 * frames // 8 + 1))  # an even frame: patches stay clean
    at = "start" if rng.random() < 0.5 else "end"
    if rng.random() < 0.5:  # an object changes colour
        shape, (c0, c1) = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLOURS), 2)
        tr = _track(rng, shape, c0, [(0, frames)])
        tr.recolour = (change, c1)
        return [tr], frames, f"What colour is the {shape} at the {at}?", c0 if at == "start" else c1
    (s0, s1), colour = (
        _pick(rng, SHAPES, 2),
        _pick(rng, list(COLOURS), 1)[0],
    )  # one shape gives way to another
    tracks = [_track(rng, s0, colour, [(0, change)]), _track(rng, s1, colour, [(change, frames)])]
    return tracks, frames, f"What shape is visible at the {at}?", s0 if at == "start" else s1


def _needle(rng: np.random.Generator, frame_range: tuple[int, int]) -> tuple[list[Track], int, str, str]:
    frames = int(rng.integers(frame_range[0], frame_range[1] + 1))
    shape, *others = _pick(rng, SHAPES, 3)
    colour = _pick(rng, list(COLOURS), 1)[0]
    start = int(rng.integers(int(0.05 * frames), max(int(0.5 * frames), int(0.05 * frames) + 1)))
    needle = _track(rng, shape, colour, [(start, start + int(rng.integers(2, 4)))], speed=1.0)
    distractors = [
        _track(rng, s, _pick(rng, list(COLOURS), 1)[0], [(0, frames)])
        for s in others[: int(rng.integers(1, 3))]
    ]
    return distractors + [needle], frames, f"What colour was the {shape} that flashed?", colour


DESCRIBE_FRAMES = (12, 32)
"""The shortest and (by default) longest v2 describe clip in frames (6-16 s at 2 fps)."""


def make_example(
    split: str,
    index: int,
    qtype: str | None = None,
    needle_frames: tuple[int, int] | None = None,
    *,
    version: int = 1,
    phrasing: str | None = None,
    source_frames: bool = False,
    clips: ClipBank | None = None,
    describe_frames: int = DESCRIBE_FRAMES[1],
    variety: float = 0.0,
) -> Example:
    """The `index`-th example of `split`; `qtype` None draws the type from the seed too.

    `version` 2 is the v2 world (varied renders, the describe type, paraphrased questions; `world_v2`); `phrasing`
    ("canonical", "seen", "held_out") rewords a clip's questions; `source_frames`: v2 clips at their source rate;
    `clips`: a share of v2 clips over real footage (`clips.ClipBank`); `describe_frames`: the longest v2 describe clip
    (`DESCRIBE_FRAMES`: 12 to 32 frames is the world's own range, so longer ones are a training choice); `variety`:
    a share of v2 clips redrawn toward other generators' styles (`render_v2.vary`)."""
    if version != 1 or phrasing is not None or clips is not None or variety:
        from tools.yardstick.world_v2 import make_example_v2

        return make_example_v2(
            split, index, qtype, needle_frames, version, phrasing, source_frames, clips, describe_frames, variety
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    salt = zlib.crc32((qtype or "any").encode())
    seed = (SPLITS[split], salt, int(index))
    rng = np.random.default_rng(seed)
    qtype = qtype or QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
    if qtype in ("colour", "shape"):
        tracks, frames, q, a = _colour_or_shape(rng, qtype)
    elif qtype == "count":
        tracks, frames, q, a = _count(rng)
    elif qtype == "order":
        tracks, frames, q, a = _order(rng)
    elif qtype == "when":
        tracks, frames, q, a = _when(rng)
    elif qtype == "needle":
        tracks, frames, q, a = _needle(rng, needle_frames or NEEDLE_TEST_FRAMES)
    else:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QUESTION_TYPES)}")
    pixels, owner = render(tracks, frames, rng)
    extra = [(eq, ea) for eq, ea in _extra_questions(tracks, qtype) if eq != q]
    return Example(pixels, q, a, qtype, seed, _pixel_labels(tracks, owner), extra)


def _extra_questions(tracks: Sequence[Track], qtype: str) -> Iterator[tuple[str, str]]:
    """Questions the clip answers besides its own: each object's colour / shape where that names it uniquely,
    and the other end of a start / end question (no randomness)."""
    shapes = [tr.shape for tr in tracks]
    colours = [c for tr in tracks for c in {tr.colour, tr.colour_at(10**9)}]
    for tr in tracks:
        if tr.recolour is None and shapes.count(tr.shape) == 1:
            yield f"What colour is the {tr.shape}?", tr.colour
        if tr.recolour is None and colours.count(tr.colour) == 1:
            yield f"What shape is the {tr.colour} object?", tr.shape
    if qtype == "when" and len(tracks) == 1:
        tr = tracks[0]
        yield f"What colour is the {tr.shape} at the start?", tr.colour
        yield f"What colour is the {tr.shape} at the end?", tr.colour_at(10**9)
    elif qtype == "when":
        yield "What shape is visible at the start?", tracks[0].shape
        yield "What shape is visible at the end?", tracks[1].shape


def _pixel_labels(tracks: Sequence[Track], owner: np.ndarray) -> np.ndarray:
    colours, shapes = list(COLOURS), list(SHAPES)
    table = np.full((len(tracks) + 1, owner.shape[0], 2), -1, np.int8)  # row -1: background
    for i, tr in enumerate(tracks):
        table[i, :, 0] = [colours.index(tr.colour_at(t)) for t in range(owner.shape[0])]
        table[i, :, 1] = shapes.index(tr.shape)
    t_index = np.arange(owner.shape[0])[:, None, None]
    return table[owner.astype(np.int64), t_index]


def example_set(per_type: int, split: str = "test", types: Sequence[str] = QUESTION_TYPES) -> list[Example]:
    """`per_type` examples of each question type from `split` (needle streams of 200-260 frames)."""
    return [make_example(split, i, t) for t in types for i in range(per_type)]


def corpus_lines() -> Iterator[str]:
    """Every question and answer word the world can produce, for training the tokenizer."""
    for s in SHAPES:
        for c in COLOURS:
            yield f"What colour is the {s}? What shape is the {c} object? {c} {s}"
            yield f"How many times does the {c} {s} appear? {' '.join(NUMBERS)}"
            yield f"Which appears first, the {c} {s} or the {c} {s}?"
            yield f"What colour is the {s} at the start? What shape is visible at the end?"
            yield f"What colour was the {s} that flashed?"
            yield f"{c}\n{s}\n{c} {s}\n"
    yield "\n".join(NUMBERS)
