"""The v2 renderer of the yardstick world: the same scenes drawn in many styles, so a model learns the task and not
one drawing style.

Per clip it draws a style: source frame rate (2-30 fps, sampled back to the world's 2 fps the way a `Session`
source is), frame size (56-256 pixels), object size, a rim or none (of varied colour and width), and a background
(plain, gradient, coarse grey texture, coloured 1/f noise; any of them may drift; or, given a `clips.ClipBank`, a
share of clips over real footage that plays on, dimmed and desaturated: see `clips`), plus sensor noise. Every frame
is a pure function of its time, so a frame kept by the sampler is the same whether or not its neighbours are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from livevlm.models.preprocess import smart_resize
from livevlm.stream.sampler import Sampler
from tools.yardstick.clips import BACKGROUND_MAX, ClipBackground, ClipView
from tools.yardstick.losses import TOKEN_PIXELS
from tools.yardstick.world import COLOURS, FPS, FRAME_SIZE, Track, _mask

SOURCE_FPS = (2.0, 3.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 24.0, 25.0, 29.97, 30.0)
SIDES = (56, 64, 72, 84, 96, 112, 128, 140, 168, 196, 224, 256)
"""Square frame sides, plus near-square sizes: all are resized to the model's 84 x 84 (3 x 3 tokens a patch)."""
NEAR_SQUARE = ((72, 96), (96, 72), (80, 92), (92, 80), (84, 96), (96, 84))
MAX_SOURCE_FRAMES = 1200
"""Long clips get a lower source frame rate, so that a needle stream stays cheap to draw."""
BACKGROUNDS = ("plain", "gradient", "texture", "noise")
"""The procedural kinds `draw_style` draws; "clip" (`Style.kind`) is laid over one of them by `clips.ClipBank`."""
RIMS = ((250, 250, 250), (200, 200, 200), (20, 20, 20), (128, 128, 128))


@dataclass(frozen=True)
class Style:
    """How one clip is drawn (everything the v2 renderer draws at random besides the scene)."""

    fps: float
    size: tuple[int, int]
    rim: tuple[int, int, int] | None
    rim_width: float
    background: str
    noise: float
    clip: ClipView | None = None
    """Real footage drawn instead of `background` (still drawn from the generator, so all else stays the same)."""
    bright: bool = False
    """The procedural background mirrored into the light half (`Background`): objects on white paper or a lit
    wall. Off in every style `draw_style` draws; `vary` turns it on."""
    true_aspect: bool = False
    """Shapes drawn round in pixels on a non-square frame (as a camera sees them; resizing to the model's square
    input then squashes them). Off: shapes are drawn in the world's square coordinates stretched to the frame."""

    @property
    def kind(self) -> str:
        """The background seen: "clip" or the procedural kind."""
        return "clip" if self.clip is not None else self.background


def draw_style(rng: np.random.Generator, frames: int) -> Style:
    """A random style for a clip of `frames` world frames (at `FPS`)."""
    rates = [f for f in SOURCE_FPS if math.ceil(frames * f / FPS) <= MAX_SOURCE_FRAMES] or [FPS]
    fps = float(rates[int(rng.integers(len(rates)))])
    if rng.random() < 0.2:
        size = NEAR_SQUARE[int(rng.integers(len(NEAR_SQUARE)))]
    else:
        side = SIDES[int(rng.integers(len(SIDES)))]
        size = (side, side)
    rim = RIMS[int(rng.integers(len(RIMS)))] if rng.random() < 0.6 else None
    return Style(fps, size, rim, float(rng.uniform(1.0, 3.0)), BACKGROUNDS[int(rng.integers(4))],
                 float(rng.choice([0.0, 0.0, 3.0, 6.0])))  # fmt: skip


WIDE = ((90, 160), (72, 128), (108, 192), (120, 160), (160, 120), (96, 176))
"""(height, width) of `vary`'s non-square frames: 16:9, 4:3 and portrait."""
SMALL_SCALE = (0.45, 0.8)
"""`vary`'s extra radius factor for small objects (down to ~2.3 pixels of 84, 6 % of the side across)."""


def vary(rng: np.random.Generator, style: Style, share: float) -> tuple[Style, float]:
    """With probability `share`, redraw `style` toward what other generators draw and the world's own styles do
    not: a light background (or real footage undimmed), small objects, a 16:9 / 4:3 frame with round shapes.
    Returns the style and a factor for the objects' radii. `rng` is the clip's own variety generator, so the scene
    and every other draw stay the same. (Over real footage, world_v2 reads `bright` as undimmed footage.)"""
    if share <= 0 or rng.random() >= share:
        return style, 1.0
    bright, small_on, wide = rng.random() < 0.5, rng.random() < 0.35, rng.random() < 0.35
    small = float(rng.uniform(*SMALL_SCALE)) if small_on else 1.0
    size = WIDE[int(rng.integers(len(WIDE)))] if wide else style.size
    return replace(style, bright=bright, size=size, true_aspect=wide), small


def sampled_indices(style: Style, frames: int) -> list[int]:
    """Which source frames a 2-fps `Sampler` keeps: exactly one per world frame."""
    sampler = Sampler(FPS)
    count = math.ceil(frames * style.fps / FPS - 1e-9)
    kept = [j for j in range(count) if sampler.keep(j / style.fps)]
    if len(kept) != frames:
        raise AssertionError(f"{style.fps} fps kept {len(kept)} of {frames} world frames")
    return kept


def _bounce(p0: float, v: float, t: float, lo: float, hi: float) -> float:
    """Where a point from `p0` at speed `v` is at time `t`, reflecting off `lo` and `hi` (closed form)."""
    span = hi - lo
    if span <= 0:
        return lo
    u = (p0 - lo + v * t) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


class Background:
    """A background as a function of time (world frames), drawn once per clip."""

    def __init__(self, rng: np.random.Generator, kind: str, size: tuple[int, int], bright: bool = False) -> None:
        h, w = size
        self.kind, self.size = kind, size
        self.drift = rng.uniform(-1.5, 1.5, size=2) * (rng.random() < 0.5)  # pixels (84-scale) per frame
        tint = rng.uniform(0.75, 1.25, size=3)  # low saturation: never mistaken for an object colour
        if kind == "plain":
            self.tile = np.full((2 * h, 2 * w, 3), rng.integers(0, 90)) * tint
        elif kind == "gradient":
            ends = rng.uniform(0, 110, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w] / max(h, w)
            ramp = (np.cos(angle) * xx + np.sin(angle) * yy) % 1.0
            self.tile = (ends[0] + (ends[1] - ends[0]) * ramp)[..., None] * tint
        elif kind == "texture":
            cells = int(rng.integers(3, 9))
            coarse = rng.uniform(15, 105, size=(cells, cells))
            big = np.kron(coarse, np.ones((-(-2 * h // cells), -(-2 * w // cells))))[: 2 * h, : 2 * w]
            self.tile = (big + rng.normal(0, 6, size=big.shape))[..., None] * tint
        else:  # 1/f noise: the amplitude spectrum of natural images
            fy, fx = np.fft.fftfreq(2 * h)[:, None], np.fft.fftfreq(2 * w)[None, :]
            amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / (2 * max(h, w)))
            layers = []
            for _ in range(3):
                phase = np.exp(2j * np.pi * rng.random((2 * h, 2 * w)))
                layers.append(np.fft.ifft2(amp * phase).real)
            field = np.stack(layers, -1)
            field = (field - field.mean()) / (field.std() + 1e-9)
            mix = field[..., :1] + 0.3 * field  # mostly luminance, a little colour
            self.tile = 60 + 22 * mix
        self.tile = np.clip(self.tile, 0, BACKGROUND_MAX)
        if bright:  # the pattern's grey mirrored into 130-255, its tint halved: never an object's saturated colour
            grey = self.tile.mean(-1, keepdims=True)
            self.tile = 255.0 - grey + 0.5 * (self.tile - grey)
        self.tile = self.tile.astype(np.float32)

    def at(self, t: float) -> np.ndarray:
        h, w = self.size
        scale = np.array([h, w]) / FRAME_SIZE
        oy, ox = np.round(self.drift * scale * t).astype(int) % np.array([h, w])
        return self.tile[oy : oy + h, ox : ox + w]


def render_v2(
    tracks: Sequence[Track], frames: int, style: Style, rng: np.random.Generator, source: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the clip in `style`: every source frame (`source`) or only those the 2-fps sampler keeps; also the
    owner of each pixel of the kept frames at `label_size` (nearest pixel; `FRAME_SIZE` square, as `render` gives
    it, unless the frame is wide)."""
    h, w = style.size
    background: Background | ClipBackground = Background(rng, style.background, style.size, style.bright)
    if style.clip is not None:
        background = ClipBackground(style.clip, style.size)
    jitter = [rng.integers(-12, 13, size=3) for _ in tracks]
    noise_seed = int(rng.integers(2**31))
    kept = sampled_indices(style, frames)
    indices = range(kept[-1] + 1) if source else kept
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gy, gx = (yy + 0.5) * FRAME_SIZE / h - 0.5, (xx + 0.5) * FRAME_SIZE / w - 0.5  # 84-scale coordinates
    uy, ux = 1.0, 1.0
    if style.true_aspect:  # one scale for both axes (the short side's); centres keep their share of each side
        uy, ux = h / min(h, w), w / min(h, w)
        gy, gx = (yy + 0.5) * FRAME_SIZE / min(h, w) - 0.5, (xx + 0.5) * FRAME_SIZE / min(h, w) - 0.5
    rim = style.rim_width
    out = np.empty((len(indices), h, w, 3), np.uint8)
    owner = np.full((frames, h, w), -1, np.int8)
    keep = {j: k for k, j in enumerate(kept)}
    for n, j in enumerate(indices):
        t = j / style.fps * FPS  # in world frames
        now = math.floor(t + 1e-9)  # the world frame this instant belongs to
        frame = background.at(t).copy()
        mine = np.full((h, w), -1, np.int8)
        for i, tr in enumerate(tracks):
            if not tr.visible(now):
                continue
            lo, hi = tr.radius, FRAME_SIZE - 1 - tr.radius
            cx, cy = (_bounce(tr.xy[k], tr.velocity[k], t, lo, hi) for k in range(2))
            cx, cy = (cx + 0.5) * ux - 0.5, (cy + 0.5) * uy - 0.5
            rgb = np.clip(np.array(COLOURS[tr.colour_at(now)]) + jitter[i], 0, 255)
            mask = _mask(tr.shape, cx, cy, tr.radius, gx, gy)
            if style.rim is not None:
                frame[_mask(tr.shape, cx, cy, tr.radius + rim, gx, gy)] = style.rim
            frame[mask] = rgb
            mine[mask] = i
        if style.noise:
            frame += np.random.default_rng([noise_seed, j]).normal(0, style.noise, size=frame.shape)
        out[n] = np.clip(frame, 0, 255).astype(np.uint8)
        if j in keep:
            owner[keep[j]] = mine
    lh, lw = label_size(h, w)
    rows = ((np.arange(lh) + 0.5) * h / lh).astype(int)
    cols = ((np.arange(lw) + 0.5) * w / lw).astype(int)
    return out, owner[:, rows][:, :, cols]


def label_size(height: int, width: int) -> tuple[int, int]:
    """The (h, w) the model's preprocessing resizes a height x width frame to (area `FRAME_SIZE`**2, aspect kept):
    84 x 84 for the world's square and near-square frames, 56 x 112 for 16:9; pixel labels are drawn at it so that
    they line up with the visual tokens."""
    return smart_resize(height, width, TOKEN_PIXELS, FRAME_SIZE**2, FRAME_SIZE**2)
