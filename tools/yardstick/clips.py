"""Backgrounds from real video clips for the v2 renderer (#20): the same scenes over footage, so a model learns the
task and not one drawing style.

Bank: each clip is decoded once with livevlm's `FileSource` at up to `BANK_FPS`, scaled in the decoder to about
`BANK_PIXELS`, at most `frames_per_clip` frames from the middle of its split's range, kept as uint8 in memory.
Splits: with `WHOLE_CLIPS_FROM` (7) or more clips, whole clips are held out (ordered by a hash of the file name,
the last ~15 % feed test, the ~15 % before them validation, the rest training: at least 5 clips); with fewer each
clip's time is cut instead (first 70 % training, next 15 % validation, last 15 % test), so training never plays
one or two clips only. Either way no frame backs more than one split.
Bank file: `python -m tools.yardstick.clips --write-bank BANK.npz CLIPS...` decodes here and writes every split's
frames (delta-coded in time, deflated: about half the raw size) for `train.py --background-bank` on a machine
without PyAV; a bank read back is the decoded one, byte for byte (same `digest()`, same examples).
Drawing: a share of v2 examples (from its own generator, so all else stays as drawn) plays one clip from a random
frame at 0.5-1.5x speed (looping), through a random crop (50-100 % of the largest of the frame's aspect, maybe
mirrored) scaled bilinearly to the frame size. Readability: the crop is desaturated (0-40 % of its chroma kept)
and dimmed into 0-`BACKGROUND_MAX`, like the procedural backgrounds, so every background pixel is darker in every
channel than the brightest channel of any object colour (>= 178 after jitter): colours stay told apart.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from livevlm.errors import ConfigError, LivevlmError, SourceError, SourceNotFoundError
from livevlm.stream import FileSource, FileSourceConfig, probe
from tools.yardstick.files import TrainFileError, meta_array, read_meta, read_npz, write_npz
from tools.yardstick.world import FPS, SPLITS

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mpg", ".mpeg", ".y4m")
BANK_FPS = 10.0
BANK_PIXELS = 192 * 108
FRAMES_PER_CLIP = 64
MAX_BANK_FRAMES = 2048
"""At most this many bank frames in all (~127 MB): more clips get fewer frames each, at least 8."""
TIME_SPLIT = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}
HELD_OUT_SHARE = 0.15
"""Of `WHOLE_CLIPS_FROM` or more clips, this share (at least one) is held out whole for validation, and as many
for test."""
WHOLE_CLIPS_FROM = 7
"""From this many clips on whole clips are held out (then training keeps at least 5); below, time ranges."""
BACKGROUND_MAX = 125.0
"""No background pixel (procedural or clip) is brighter than this in any channel."""
SATURATION, DIM, SPEED, CROP = (0.0, 0.4), (0.3, BACKGROUND_MAX / 255), (0.5, 1.5), (0.5, 1.0)
_CLIP_SALT = 0x434C
BANK_FORMAT = "yardstick-clip-bank/1"


@dataclass(frozen=True)
class ClipRange:
    """Which part of a clip backs one split: its path, time range (seconds) and the frames kept from it."""

    path: str
    seconds: tuple[float, float]
    frames: np.ndarray = field(repr=False, compare=False)
    """(N, H, W, 3) uint8, consecutive at `rate`."""
    rate: float
    pts: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True)
class ClipView:
    """One example's clip background: which frames, from where, through which crop and tone."""

    source: ClipRange
    start: int
    speed: float
    box: tuple[float, float, float, float]
    """(y0, x0, height, width) of the crop, in bank pixels."""
    flip: bool
    saturation: float
    dim: float
    cap: float = BACKGROUND_MAX
    """No pixel brighter than this (255: footage as shot, for `render_v2.vary`'s undimmed clips)."""


def clip_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The video files named by `spec`: paths (a comma-separated string or a list), folders searched for videos."""
    items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, Path) else list(spec)
    out: list[Path] = []
    for item in (Path(str(i).strip()) for i in items if str(i).strip()):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ConfigError(
                    f"background clip folder {item} holds no video ({', '.join(VIDEO_SUFFIXES)})"
                )
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise SourceNotFoundError(f"background clip not found: {item}")
    if not out:
        raise ConfigError(f"no background clips named by {spec!r}")
    return out


def assign_splits(paths: Sequence[Path]) -> dict[str, list[tuple[Path, tuple[float, float]]]]:
    """Each split's (clip, fraction of its duration): whole clips held out from `WHOLE_CLIPS_FROM` clips on, else
    time ranges of every clip."""
    if len(paths) < WHOLE_CLIPS_FROM:
        return {s: [(p, TIME_SPLIT[s]) for p in paths] for s in SPLITS}
    order = sorted(paths, key=lambda p: (zlib.crc32(p.name.encode()), str(p)))
    held = max(1, round(HELD_OUT_SHARE * len(order)))
    parts = {"train": order[: -2 * held], "val": order[-2 * held : -held], "test": order[-held:]}
    return {s: [(p, (0.0, 1.0)) for p in parts[s]] for s in SPLITS}


def decode_range(path: Path, fraction: tuple[float, float], limit: int) -> ClipRange:
    """Up to `limit` consecutive bank frames from the middle of `fraction` of the clip; errors name the path."""
    try:
        duration = probe(path).duration_seconds
    except SourceError as e:
        raise type(e)(f"background clip {path}: {e}") from e
    if not duration:
        raise SourceError(
            f"background clip {path} declares no duration: empty, or a raw stream (remux it to mp4)"
        )
    lo, hi = fraction[0] * duration, fraction[1] * duration
    start = lo + max(0.0, (hi - lo - limit / BANK_FPS) / 2)
    config = FileSourceConfig(path, fps=BANK_FPS, max_frames=limit, start_seconds=start,
                              max_input_pixels=BANK_PIXELS)  # fmt: skip
    try:
        with FileSource(config) as src:
            frames = [f for f in src if f.pts_seconds < hi]
    except SourceError as e:
        raise type(e)(f"background clip {path}: {e}") from e
    if not frames:
        raise SourceError(f"background clip {path}: no frame in [{lo:.2f}, {hi:.2f}) s")
    pts = tuple(f.pts_seconds for f in frames)
    rate = (len(pts) - 1) / (pts[-1] - pts[0]) if len(pts) > 1 and pts[-1] > pts[0] else BANK_FPS
    return ClipRange(str(path), (lo, hi), np.stack([f.data for f in frames]), float(rate), pts)


class ClipBank:
    """Each split's clip frames in memory, and the clip background an example of that split draws."""

    def __init__(self, ranges: dict[str, list[ClipRange]], share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"background clip share must be in [0, 1], got {share}")
        self.ranges, self.share = ranges, share

    @classmethod
    def load(cls, spec: str | Path | Sequence[str | Path], share: float = 0.5,
             frames_per_clip: int = FRAMES_PER_CLIP) -> ClipBank:  # fmt: skip
        """Decode the clips named by `spec` into per-split banks; `share` of v2 examples draw a clip background."""
        plan = assign_splits(clip_paths(spec))
        pieces = sum(len(v) for v in plan.values())
        limit = min(frames_per_clip, MAX_BANK_FRAMES // pieces)
        if limit < 8:
            raise ConfigError(f"{pieces} clip ranges leave under 8 bank frames each: give fewer clips")
        return cls({s: [decode_range(p, f, limit) for p, f in plan[s]] for s in SPLITS}, share)

    def __repr__(self) -> str:
        sizes = {s: [r.frames.shape for r in v] for s, v in self.ranges.items()}
        return f"ClipBank(share={self.share}, frames={sizes})"

    @property
    def nbytes(self) -> int:
        return sum(r.frames.nbytes for v in self.ranges.values() for r in v)

    def digest(self) -> str:
        """Hash of every split's frames, rates and times (not the paths): equal for a bank and its file."""
        h = hashlib.sha256()
        for split in sorted(self.ranges):
            for r in self.ranges[split]:
                times = ([float(x) for x in r.seconds], float(r.rate), [float(x) for x in r.pts])
                h.update(repr((split, times, r.frames.shape)).encode())
                h.update(r.frames.tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> int:
        """Write every split's frames and ranges to one .npz (atomically, frames delta-coded in time); returns bytes."""
        ranges = {s: [{"path": r.path, "seconds": r.seconds, "rate": r.rate, "pts": r.pts} for r in v]
                  for s, v in self.ranges.items()}  # fmt: skip
        arrays = {f"{s}.{i}": np.diff(r.frames, axis=0, prepend=np.zeros_like(r.frames[:1]))
                  for s, v in self.ranges.items() for i, r in enumerate(v)}  # fmt: skip
        meta = {"format": BANK_FORMAT, "ranges": ranges, "digest": self.digest()}
        return write_npz(path, {"meta": meta_array(meta), **arrays})

    @classmethod
    def from_file(cls, path: str | Path, share: float = 0.5) -> ClipBank:
        """The bank `save` wrote at `path`, byte for byte (checked against the digest it was saved with)."""
        arrays = read_npz(path, "background bank")
        meta = read_meta(arrays, path, "background bank", BANK_FORMAT)
        try:
            ranges = {s: [ClipRange(r["path"], tuple(r["seconds"]), np.cumsum(arrays[f"{s}.{i}"], axis=0,
                                    dtype=np.uint8), float(r["rate"]), tuple(r["pts"]))
                          for i, r in enumerate(v)] for s, v in meta["ranges"].items()}  # fmt: skip
        except KeyError as e:
            raise TrainFileError(f"background bank {path} lacks {e}") from e
        bank = cls(ranges, share)
        if set(ranges) != set(SPLITS) or bank.digest() != meta["digest"]:
            raise TrainFileError(f"background bank {path} does not match its digest or lacks a split")
        return bank

    def view(self, split: str, seed: tuple[int, ...], size: tuple[int, int]) -> ClipView | None:
        """The clip background of the example with `seed` in `split` at frame `size`, or None (its own draws)."""
        rng = np.random.default_rng((*seed, _CLIP_SALT))
        if rng.random() >= self.share:
            return None
        bank = self.ranges[split]
        source = bank[int(rng.integers(len(bank)))]
        n, height, width = source.frames.shape[:3]
        aspect = size[1] / size[0]
        crop_h = min(height, width / aspect) * rng.uniform(*CROP)
        crop_w = crop_h * aspect
        box = (rng.uniform(0, height - crop_h), rng.uniform(0, width - crop_w), crop_h, crop_w)
        return ClipView(source, int(rng.integers(n)), float(rng.uniform(*SPEED)), box, bool(rng.random() < 0.5),
                        float(rng.uniform(*SATURATION)), float(rng.uniform(*DIM)))  # fmt: skip


@functools.lru_cache(maxsize=4)
def open_bank(spec: str, share: float, bank_file: str = "") -> ClipBank | None:
    """A training run's bank, once per process: `--background-bank FILE`, else `--background-clips` decoded, else None."""
    if bank_file:
        return ClipBank.from_file(bank_file, share)
    return ClipBank.load(spec, share) if spec.strip() else None


def _taps(start: float, length: float, out: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sample positions of `out` pixels over [start, start + length): low index, high index, weight."""
    pos = np.clip(start + (np.arange(out) + 0.5) * length / out - 0.5, 0, limit - 1)
    lo = np.floor(pos).astype(np.int64)
    return lo, np.minimum(lo + 1, limit - 1), (pos - lo).astype(np.float32)


class ClipBackground:
    """A clip background as a function of time (world frames), at the style's frame size."""

    def __init__(self, view: ClipView, size: tuple[int, int]) -> None:
        self.view, self.size = view, size
        frames = view.source.frames
        y0, x0, crop_h, crop_w = view.box
        (r0, r1, wy), (c0, c1, wx) = (_taps(y0, crop_h, size[0], frames.shape[1]),
                                      _taps(x0, crop_w, size[1], frames.shape[2]))  # fmt: skip
        if view.flip:
            c0, c1, wx = c0[::-1], c1[::-1], wx[::-1]
        top, left = int(r0.min()), int(c0.min())
        self.window = np.s_[top : int(r1.max()) + 1, left : int(c1.max()) + 1]
        self.rows, self.cols = (r0 - top, r1 - top), (c0 - left, c1 - left)
        self.wy, self.wx = ((1 - wy)[:, None, None], wy[:, None, None]), ((1 - wx)[:, None], wx[:, None])
        luma = np.array([0.299, 0.587, 0.114], np.float32)[:, None]  # tone: linear, so done before scaling
        tone = view.dim * ((1 - view.saturation) * luma + view.saturation * np.eye(3))
        self.tone = tone.astype(np.float32)
        self._last: tuple[int, np.ndarray] | None = None

    def index(self, t: float) -> int:
        """The bank frame shown at `t` world frames (the clip loops)."""
        played = t / FPS * self.view.speed * self.view.source.rate
        return (self.view.start + math.floor(played + 1e-9)) % len(self.view.source.frames)

    def at(self, t: float) -> np.ndarray:
        i = self.index(t)
        if self._last is None or self._last[0] != i:
            self._last = (i, self._draw(self.view.source.frames[i]))
        return self._last[1]

    def _draw(self, frame: np.ndarray) -> np.ndarray:
        img = frame[self.window].astype(np.float32) @ self.tone
        rows = img[self.rows[0]] * self.wy[0]
        rows += img[self.rows[1]] * self.wy[1]
        out = rows[:, self.cols[0]] * self.wx[0]
        out += rows[:, self.cols[1]] * self.wx[1]
        return np.minimum(out, self.view.cap, out=out)


def main(argv: list[str] | None = None) -> None:
    """`--write-bank OUT CLIPS...`: decode the clips into per-split banks and write them to one file."""
    parser = argparse.ArgumentParser(description="Pre-decode background clips into a bank file for train.py")
    parser.add_argument("--write-bank", required=True, metavar="OUT", help="bank file to write (.npz)")
    parser.add_argument("clips", nargs="+", help="video files or folders (as for --background-clips)")
    parser.add_argument("--frames-per-clip", type=int, default=FRAMES_PER_CLIP)
    args = parser.parse_args(argv)
    if args.frames_per_clip < 1:
        parser.error("--frames-per-clip must be at least 1")
    if not Path(args.write_bank).resolve().parent.is_dir():
        parser.error(f"--write-bank {args.write_bank}: its folder does not exist")
    try:
        bank = ClipBank.load(args.clips, frames_per_clip=args.frames_per_clip)
    except LivevlmError as e:  # a missing clip, a folder with none, too few frames: one line, not a traceback
        parser.error(str(e))
    size = bank.save(args.write_bank)
    frames = {s: [r.frames.shape[0] for r in v] for s, v in bank.ranges.items()}
    print(f"wrote {args.write_bank}: {size / 1e6:.1f} MB ({bank.nbytes / 1e6:.1f} MB of frames), digest "
          f"{bank.digest()}, frames per split {frames}")  # fmt: skip


if __name__ == "__main__":
    main()
