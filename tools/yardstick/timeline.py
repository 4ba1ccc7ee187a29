"""Long world videos with a known event timeline, and the score of a summary against that timeline.

    python -m tools.yardstick.timeline OUT.mp4 --minutes 10 --seed 0   # writes OUT.mp4 and OUT.events.json

A scene of the yardstick world (`world.Track` / `world.render`) that runs for minutes: at most three objects
are on screen, never two of one shape or one colour, and every `gap` seconds one event happens: an object
appears, leaves, or changes colour (once per object, as a `Track` can). Event times fall on even frames so a
temporal patch (two frames) never straddles one. Deterministic from the seed; the QA splits are untouched.
`score_events` counts an event recalled when a segment or chapter whose time range holds it (within a
tolerance) names its object (colour and shape) and its kind; a named event is precise when it matches one.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tools.yardstick.world import COLOURS, FPS, SHAPES, Track, render

KINDS = ("appears", "leaves", "changes colour")
MAX_ON_SCREEN = 3
_KIND_WORDS = {
    "appears": ("appear", "appears", "appeared", "enters", "arrives", "joins", "comes"),
    "leaves": ("leave", "leaves", "left", "vanishes", "disappears", "exits", "goes", "gone"),
    "changes colour": ("change", "changes", "changed", "turns", "turned", "becomes", "became"),
}
_KIND_OF = {w: k for k, ws in _KIND_WORDS.items() for w in ws}


@dataclass(frozen=True)
class Event:
    """One thing that happens at `seconds`: the `colour` `shape` appears, leaves, or turns `new_colour`."""

    seconds: float
    kind: str
    shape: str
    colour: str
    new_colour: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "changes colour":
            return f"the {self.colour} {self.shape} turns {self.new_colour}"
        return f"the {self.colour} {self.shape} {self.kind}"


@dataclass(frozen=True)
class Mention:
    """An event (or, with `kind` None, only an object) that a text names."""

    kind: str | None
    shape: str
    colour: str


def make_timeline(
    seconds: float, seed: int, gap: tuple[float, float] = (8.0, 16.0)
) -> tuple[list[Track], list[Event]]:
    """Tracks for a `seconds`-long scene and its events in time order (objects on screen at 0 s are no event)."""
    rng = np.random.default_rng([0x7E11, seed])
    frames = round(seconds * FPS)
    colours = list(COLOURS)
    tracks: list[Track] = []
    on: list[int] = []  # indices of the tracks on screen now

    def add(start: int) -> Track:
        shapes = [s for s in SHAPES if s not in {tracks[i].shape for i in on}]
        taken = {tracks[i].colour_at(start) for i in on}
        free = [c for c in colours if c not in taken]
        shape, colour = shapes[rng.integers(len(shapes))], free[rng.integers(len(free))]
        r = float(rng.uniform(8.5, 13.0))
        xy = tuple(rng.uniform(r, 83 - r, size=2).tolist())
        tr = Track(shape, r, colour, [(start, frames)], xy, tuple(rng.uniform(-2.5, 2.5, size=2).tolist()))
        tracks.append(tr)
        on.append(len(tracks) - 1)
        return tr

    for _ in range(int(rng.integers(1, 3))):
        add(0)
    events: list[Event] = []
    t = 2 * int(rng.uniform(*gap) * FPS / 2)
    while t < frames - 2 * FPS:  # the last event leaves a second on screen
        kinds = ["appears"] * (len(on) < MAX_ON_SCREEN) + ["leaves"] * (len(on) > 1)
        kinds += ["changes colour"] * any(tracks[i].recolour is None for i in on)
        kind = kinds[rng.integers(len(kinds))]
        if kind == "appears":
            tr = add(t)
            events.append(Event(t / FPS, kind, tr.shape, tr.colour))
        elif kind == "leaves":
            i = on.pop(int(rng.integers(len(on))))
            tracks[i].spans = [(tracks[i].spans[0][0], t)]
            events.append(Event(t / FPS, kind, tracks[i].shape, tracks[i].colour_at(t)))
        else:
            i = [j for j in on if tracks[j].recolour is None][
                int(rng.integers(sum(tracks[j].recolour is None for j in on)))
            ]
            taken = {tracks[j].colour_at(t) for j in on}
            new = [c for c in colours if c not in taken][int(rng.integers(len(colours) - len(taken)))]
            events.append(Event(t / FPS, kind, tracks[i].shape, tracks[i].colour, new))
            tracks[i].recolour = (t, new)
        t += 2 * int(rng.uniform(*gap) * FPS / 2)
    return tracks, events


def write_video(path: str | Path, seconds: float, seed: int, scale: int = 2, crf: int = 12) -> list[Event]:
    """Render the scene, encode it to H.264 mp4 at `FPS` (each pixel `scale` x `scale`, yuv420p) and write
    the events beside it (PATH with .events.json); returns the events."""
    import av

    path = Path(path)
    tracks, events = make_timeline(seconds, seed)
    frames, _ = render(tracks, round(seconds * FPS), np.random.default_rng([0xF4A3, seed]))
    rate = Fraction(FPS).limit_denominator(1000)
    with av.open(str(path), "w") as dst:
        stream = dst.add_stream("libx264", rate=rate)
        stream.width = stream.height = frames.shape[1] * scale
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast", "g": str(int(4 * FPS))}
        for i, rgb in enumerate(frames):
            big = np.ascontiguousarray(rgb.repeat(scale, axis=0).repeat(scale, axis=1))
            frame = av.VideoFrame.from_ndarray(big, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    meta = {"seconds": seconds, "seed": seed, "fps": FPS, "events": [asdict(e) for e in events]}
    events_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    return events


def events_path(video: str | Path) -> Path:
    """Where `write_video` keeps the events of `video`."""
    video = Path(video)
    return video.with_name(video.stem + ".events.json")


def read_events(video: str | Path) -> list[Event]:
    """The events `write_video` wrote beside `video`."""
    return [Event(**e) for e in json.loads(events_path(video).read_text())["events"]]


def mentions(text: str) -> list[Mention]:
    """The objects a text names ('red circle') and, where a kind word follows in the same clause, their event."""
    out = []
    for clause in re.split(r"[.;,\n]|\band\b|\bthen\b", text.lower().replace("color", "colour")):
        words = re.findall(r"[a-z]+", clause)
        for i in range(len(words) - 1):
            if words[i] in COLOURS and words[i + 1] in SHAPES:
                kind = next((_KIND_OF[w] for w in words[i + 2 :] if w in _KIND_OF), None)
                out.append(Mention(kind, words[i + 1], words[i]))
    return out


def _matches(event: Event, m: Mention, strict: bool) -> bool:
    colour_ok = m.colour in (event.colour, event.new_colour)
    return m.shape == event.shape and colour_ok and (not strict or m.kind == event.kind)


def score_events(
    events: Sequence[Event], windows: Iterable[tuple[float, float, str]], tolerance: float = 5.0
) -> dict[str, Any]:
    """Recall and precision of `events` named in `windows` ((start, end, text) each: segments or chapters).

    strict: the mention names the object and the event's kind; objects: the object alone (a diagnostic).
    An event counts when a window whose [start - tolerance, end + tolerance) holds its time names it; a
    mention counts as right when it names an event in its own window so widened. Precision is None when the
    texts name nothing."""
    windows = list(windows)
    found = [(a, b, m) for a, b, text in windows for m in mentions(text)]
    out: dict[str, Any] = {"events": len(events), "windows": len(windows), "tolerance_seconds": tolerance}
    for level, strict in (("strict", True), ("objects", False)):
        named = [(a, b, m) for a, b, m in found if m.kind is not None or not strict]

        def near(e: Event, a: float, b: float) -> bool:
            return a - tolerance <= e.seconds < b + tolerance

        hit = sum(any(near(e, a, b) and _matches(e, m, strict) for a, b, m in named) for e in events)
        right = sum(any(near(e, a, b) and _matches(e, m, strict) for e in events) for a, b, m in named)
        out[level] = {
            "recall": hit / len(events) if events else None,
            "precision": right / len(named) if named else None,
            "named": len(named),
            "recalled": hit,
            "right": right,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: write a long world video and its events."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output .mp4 (events go to OUT.events.json)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.minutes > 0:
        p.error("--minutes must be > 0")
    if not args.out.resolve().parent.is_dir():
        p.error(f"{args.out}: its folder does not exist")
    events = write_video(args.out, args.minutes * 60, args.seed)
    print(f"wrote {args.out} and {events_path(args.out)} ({len(events)} events)")


if __name__ == "__main__":
    main()
