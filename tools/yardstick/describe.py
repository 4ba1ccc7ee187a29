"""The "describe" target of the yardstick world (v2): the objects in a clip and its events, in a fixed grammar.

    description := objects [ "; " events ]
    objects     := object { ", " object }            every object seen, in order of first appearance
    events      := event { ", " event }              in time order
    event       := object " appears" | object " leaves" | object " turns " colour
    object      := colour " " shape                  the colour it has at that moment

Ties (same frame) are broken by the objects' order: first appearance, then shape, then colour, all visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tools.yardstick.world import COLOURS, SHAPES, Track

_KIND = {"leaves": 0, "turns": 1, "appears": 2}


@dataclass
class Description:
    """A description read back: objects as (colour, shape) and events as (colour, shape, verb, new colour)."""

    objects: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    well_formed: bool = True
    """False when some part did not follow the grammar (that part is skipped)."""


def describe(tracks: Sequence[Track], frames: int) -> str:
    """The description of a clip of `frames` frames drawn from `tracks`."""
    seen = [
        (min(a for a, _ in tr.spans if a < frames), i) for i, tr in enumerate(tracks) if _shown(tr, frames)
    ]
    order = sorted(seen, key=lambda s: (s[0], SHAPES.index(tracks[s[1]].shape),
                                        list(COLOURS).index(tracks[s[1]].colour_at(s[0]))))  # fmt: skip
    rank = {i: r for r, (_, i) in enumerate(order)}
    objects = [f"{tracks[i].colour_at(t)} {tracks[i].shape}" for t, i in order]
    events = []
    for i, r in rank.items():
        tr = tracks[i]
        for a, b in tr.spans:
            if 0 < a < frames:
                events.append((a, r, _KIND["appears"], f"{tr.colour_at(a)} {tr.shape} appears"))
            if a < b < frames:
                events.append((b, r, _KIND["leaves"], f"{tr.colour_at(b - 1)} {tr.shape} leaves"))
        if tr.recolour is not None and 0 < tr.recolour[0] < frames and tr.visible(tr.recolour[0]):
            t, new = tr.recolour
            events.append((t, r, _KIND["turns"], f"{tr.colour_at(t - 1)} {tr.shape} turns {new}"))
    text = ", ".join(objects)
    return f"{text}; {', '.join(e[-1] for e in sorted(events))}" if events else text


def _shown(tr: Track, frames: int) -> bool:
    return any(a < min(b, frames) for a, b in tr.spans)


def _object(words: list[str]) -> tuple[str, str] | None:
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return words[0], words[1]
    return None


def parse_description(text: str) -> Description:
    """Read a description back (tolerant: parts outside the grammar are skipped and flagged)."""
    out = Description()
    head, _, tail = text.strip().rstrip(".").partition(";")
    for part in filter(None, (p.strip() for p in head.split(","))):
        obj = _object(part.split())
        out.well_formed &= obj is not None
        if obj is not None:
            out.objects.append(obj)
    for part in filter(None, (p.strip() for p in tail.split(","))):
        words = part.split()
        obj = _object(words[:2])
        if obj is not None and words[2:] in (["appears"], ["leaves"]):
            out.events.append((*obj, words[2], ""))
        elif obj is not None and len(words) == 4 and words[2] == "turns" and words[3] in COLOURS:
            out.events.append((*obj, "turns", words[3]))
        else:
            out.well_formed = False
    out.well_formed &= bool(out.objects)  # a description names at least one object
    return out


def score_description(reply: str, answer: str) -> dict[str, float]:
    """Object recall / precision and event recall / precision of `reply` against the true `answer` (multisets),
    and whether the events came in the true order."""
    got, want = parse_description(reply), parse_description(answer)
    if not want.well_formed:
        raise ValueError(f"the true description does not follow the grammar: {answer!r}")

    def overlap(a: list, b: list) -> int:
        rest, hits = list(b), 0
        for x in a:
            if x in rest:
                rest.remove(x)
                hits += 1
        return hits

    objects, events = overlap(want.objects, got.objects), overlap(want.events, got.events)
    return {
        "object_recall": objects / len(want.objects) if want.objects else 1.0,
        "object_precision": objects / len(got.objects) if got.objects else float(not want.objects),
        "event_recall": events / len(want.events) if want.events else 1.0,
        "event_precision": events / len(got.events) if got.events else float(not want.events),
        "events_in_order": float(got.events == want.events),
        "well_formed": float(got.well_formed),
    }
