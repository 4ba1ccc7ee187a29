"""The yardstick world, version 2: v1's scenes plus a "describe" type, in varied drawing styles, asked in many wordings.

`make_example(split, i, qtype, version=2)` gets here. A v2 clip is a pure function of (split, index, qtype) like a
v1 clip, from its own seed (v1 examples are untouched). The wording of its questions is drawn from a separate
generator, so the same clip can be asked in seen and held-out wordings (a paired measure of wording robustness);
held-out wordings are refused for the training split. Given a `clips.ClipBank`, a share of clips is drawn over real
footage from that split's part of the bank (decided by the clip's seed alone; without a bank nothing changes).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from tools.yardstick.clips import ClipBank
from tools.yardstick.describe import describe
from tools.yardstick.phrasing import POOLS, corpus, reword
from tools.yardstick.render_v2 import draw_style, render_v2, vary
from tools.yardstick.world import (
    COLOURS,
    DESCRIBE_FRAMES,
    FRAME_SIZE,
    NEEDLE_TEST_FRAMES,
    NUMBERS,
    QUESTION_TYPES,
    SHAPES,
    SPLITS,
    Example,
    Track,
    _colour_or_shape,
    _count,
    _extra_questions,
    _needle,
    _order,
    _pick,
    _pixel_labels,
    _track,
    _when,
    make_example,
)

QUESTION_TYPES_V2: tuple[str, ...] = (*QUESTION_TYPES, "describe")
DESCRIBE_QUESTION = "Describe what happens."
RADIUS_SCALE = (0.6, 1.3)
"""v2 objects are v1's size times this (radii 5.1-16.9 pixels of 84)."""
_PHRASING_SALT = 0x5048
_VARIETY_SALT = 0x5641
UNDIMMED_TONE = ((0.3, 0.9), (0.7, 1.0))
"""Saturation and dim of `vary`'s undimmed footage (the world's own: 0-0.4 and 0.3-0.49, capped at 125)."""


def _describe_scene(
    rng: np.random.Generator, max_frames: int = DESCRIBE_FRAMES[1]
) -> tuple[list[Track], int, str, str]:
    """12 to `max_frames` frames: 1-3 objects from the start, up to 2 more later; some leave, some change colour
    (events on even frames)."""
    frames = int(rng.integers(DESCRIBE_FRAMES[0], max_frames + 1))
    first, later = int(rng.integers(1, 4)), int(rng.integers(0, 3))
    n = min(first + later, len(SHAPES))
    shapes, colours = _pick(rng, SHAPES, n), _pick(rng, list(COLOURS), min(n + 2, len(COLOURS)))
    spare = colours[n:]  # a colour no object starts with, for a colour change
    last = 2 * ((frames - 2) // 2)  # the last even frame an event may fall on
    tracks = []
    for i in range(n):
        start = 0 if i < first else 2 * int(rng.integers(1, max(2, last // 2)))
        start = min(start, last - 2)
        end = frames
        if rng.random() < 0.3 and start + 4 <= last:
            end = 2 * int(rng.integers((start + 4) // 2, last // 2 + 1))
        tr = _track(rng, shapes[i], colours[i], [(start, end)])
        if spare and rng.random() < 0.3 and start + 2 <= min(end, frames) - 2:
            tr.recolour = (
                2 * int(rng.integers((start + 2) // 2, (min(end, frames) - 2) // 2 + 1)),
                spare.pop(),
            )
        tracks.append(tr)
    return tracks, frames, DESCRIBE_QUESTION, describe(tracks, frames)


ORDER_DISTRACTOR = 0.5
"""Share of v2 order clips with a third object, not asked about, that is there from the first frame (before or with
both): without it "the first object to appear" answers every order question, and a v2 model warm-started from v1
answered the sample's "the green triangle or the blue square?" with "red circle"."""
WHEN_STEADY = 0.3
"""Share of v2 "when" clips in which nothing changes (one object, one colour, one shape): without them "at the end"
always means "after a change", and asked after the first frames of a stream that model named the colour the
object had not turned yet."""


def _order_v2(rng: np.random.Generator) -> tuple[list[Track], int, str, str]:
    tracks, frames, q, a = _order(rng)
    if rng.random() < ORDER_DISTRACTOR:
        shape = _pick(rng, [s for s in SHAPES if s not in {t.shape for t in tracks}], 1)[0]
        colour = _pick(rng, [c for c in COLOURS if c not in {t.colour for t in tracks}], 1)[0]
        end = frames if rng.random() < 0.7 else int(rng.integers(2, frames))
        # drawn first: beneath the asked-about objects
        tracks.insert(0, _track(rng, shape, colour, [(0, end)]))
    return tracks, frames, q, a


def _when_v2(rng: np.random.Generator) -> tuple[list[Track], int, str, str]:
    if rng.random() >= WHEN_STEADY:
        return _when(rng)
    frames = int(rng.integers(12, 25))
    at = "start" if rng.random() < 0.5 else "end"
    shape, colour = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLOURS), 1)[0]
    tracks = [_track(rng, shape, colour, [(0, frames)])]
    if rng.random() < 0.5:
        return tracks, frames, f"What colour is the {shape} at the {at}?", colour
    return tracks, frames, f"What shape is visible at the {at}?", shape


def _scene(
    rng: np.random.Generator,
    qtype: str,
    needle_frames: tuple[int, int],
    describe_frames: int = DESCRIBE_FRAMES[1],
):
    if qtype in ("colour", "shape"):
        return _colour_or_shape(rng, qtype)
    if qtype == "count":
        return _count(rng)
    if qtype == "order":
        return _order_v2(rng)
    if qtype == "when":
        return _when_v2(rng)
    if qtype == "needle":
        return _needle(rng, needle_frames)
    if qtype == "describe":
        return _describe_scene(rng, describe_frames)
    raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QUESTION_TYPES_V2)}")


def make_example_v2(
    split: str,
    index: int,
    qtype: str | None,
    needle_frames: tuple[int, int] | None,
    version: int,
    phrasing: str | None,
    source_frames: bool,
    clips: ClipBank | None = None,
    describe_frames: int = DESCRIBE_FRAMES[1],
    variety: float = 0.0,
) -> Example:
    """A v2 clip (or, `version` 1, the v1 clip) with its questions worded from `phrasing` (default: v1 canonical,
    v2 seen), a share of v2 clips over `clips`' footage, a `variety` share redrawn by `render_v2.vary`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if version not in (1, 2):
        raise ValueError(f"unknown world version {version!r}; choose 1 or 2")
    pool = phrasing or ("canonical" if version == 1 else "seen")
    if pool not in POOLS:
        raise ValueError(f"unknown phrasing pool {pool!r}; choose one of {', '.join(POOLS)}")
    if describe_frames < DESCRIBE_FRAMES[0]:
        raise ValueError(
            f"describe_frames must be >= {DESCRIBE_FRAMES[0]} (the shortest describe clip), got {describe_frames}"
        )
    if pool == "held_out" and split == "train":
        raise ValueError("held-out wordings are never used in the training split")
    if version == 1:
        if source_frames:
            raise ValueError("v1 clips have no other source frame rate")
        if clips is not None or variety:
            raise ValueError("v1 clips have no backgrounds from clips or variety (use version=2)")
        return reworded(make_example(split, index, qtype, needle_frames), pool)
    salt = zlib.crc32((qtype or "any").encode())
    seed = (SPLITS[split], salt, int(index), 2)
    rng = np.random.default_rng(seed)
    qtype = qtype or QUESTION_TYPES_V2[int(rng.integers(len(QUESTION_TYPES_V2)))]
    scene = _scene(rng, qtype, needle_frames or NEEDLE_TEST_FRAMES, describe_frames)
    return reworded(draw_scene(split, seed, rng, qtype, scene, clips, variety, source_frames), pool)


def draw_scene(
    split: str,
    seed: tuple[int, ...],
    rng: np.random.Generator,
    qtype: str,
    scene: tuple[list[Track], int, str, str],
    clips: ClipBank | None = None,
    variety: float = 0.0,
    source_frames: bool = False,
) -> Example:
    """A v2 scene (tracks, frames, question, answer) drawn as every v2 clip is: object sizes, a style, `variety`'s
    redraw, `clips`' footage, then the renderer, all from `rng` (the clip's generator, past its scene draws) and
    `seed`. Alters the tracks' radii and positions. The question is not reworded yet (`reworded`)."""
    tracks, frames, q, a = scene
    scales = [float(rng.uniform(*RADIUS_SCALE)) for _ in tracks]
    style = draw_style(rng, frames)
    style, small = vary(np.random.default_rng((*seed, _VARIETY_SALT)), style, variety)
    for tr, scale in zip(tracks, scales, strict=True):
        tr.radius *= scale * small
        lo, hi = tr.radius, FRAME_SIZE - 1 - tr.radius
        tr.xy = tuple(float(np.clip(v, lo, hi)) for v in tr.xy)
    if clips is not None:
        style = replace(style, clip=clips.view(split, seed, style.size))
        if style.clip is not None and style.bright:  # footage as shot: bright, coloured, busy
            tone = np.random.default_rng((*seed, _VARIETY_SALT, 1))
            style = replace(style, bright=False, clip=replace(
                style.clip, saturation=float(tone.uniform(*UNDIMMED_TONE[0])),
                dim=float(tone.uniform(*UNDIMMED_TONE[1])), cap=255.0))  # fmt: skip
    pixels, owner = render_v2(tracks, frames, style, rng, source_frames)
    extra = [(eq, ea) for eq, ea in _v2_extra(tracks, frames, qtype) if eq != q]
    return Example(pixels, q, a, qtype, seed, _pixel_labels(tracks, owner), extra,
                   style.fps if source_frames else 2.0, style)  # fmt: skip


def reworded(ex: Example, pool: str) -> Example:
    """`ex` with its questions worded from `pool`, drawn from the clip's own phrasing generator (in place)."""
    words = np.random.default_rng((*ex.seed, _PHRASING_SALT))
    ex.question = reword(ex.question, pool, words)
    ex.extra = [(reword(q, pool, words), a) for q, a in ex.extra]
    return ex


def _v2_extra(tracks: Sequence[Track], frames: int, qtype: str) -> Iterator[tuple[str, str]]:
    yield from _extra_questions(tracks, qtype)
    if qtype != "describe":
        yield DESCRIBE_QUESTION, describe(tracks, frames)


def example_set_v2(per_type: int, split: str = "test", types: Sequence[str] = QUESTION_TYPES_V2,
                   phrasing: str | None = None, source_frames: bool = False,
                   clips: ClipBank | None = None) -> list[Example]:  # fmt: skip
    """`per_type` v2 examples of each type from `split` (needle streams of 200-260 frames)."""
    return [make_example(split, i, t, version=2, phrasing=phrasing, source_frames=source_frames, clips=clips)
            for t in types for i in range(per_type)]  # fmt: skip


def corpus_lines_v2() -> Iterator[str]:
    """Every seen wording and answer word of the v2 world (held-out wordings are not), for the tokenizer."""
    yield from corpus("seen")
    for s in SHAPES:
        for c in COLOURS:
            yield f"{c} {s}, {c} {s}; {c} {s} appears, {c} {s} leaves, {c} {s} turns {c}"
            yield f"{c}\n{s}\n{c} {s}\n"
    yield "\n".join(NUMBERS)
