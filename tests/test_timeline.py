"""Long world videos with a known event timeline (tools/yardstick/timeline.py) and the event score."""

from __future__ import annotations

import numpy as np
import pytest

from livevlm.stream import probe
from tools.yardstick.timeline import (
    MAX_ON_SCREEN,
    Event,
    Mention,
    make_timeline,
    mentions,
    read_events,
    score_events,
    write_video,
)
from tools.yardstick.world import FPS, render


def test_timeline_is_deterministic_and_its_events_are_what_the_tracks_draw() -> None:
    tracks, events = make_timeline(300, seed=3)
    again, same = make_timeline(300, seed=3)
    assert events == same and [t.spans for t in tracks] == [t.spans for t in again]
    assert events != make_timeline(300, seed=4)[1]
    assert {e.kind for e in events} == {"appears", "leaves", "changes colour"} and len(events) >= 15
    frames = round(300 * FPS)
    _, owner = render(tracks, frames, np.random.default_rng(0))
    for t in range(frames):  # at most three on screen, never two of one shape or one colour
        on = [tr for tr in tracks if tr.visible(t)]
        assert 1 <= len(on) <= MAX_ON_SCREEN
        assert len({tr.shape for tr in on}) == len(on) == len({tr.colour_at(t) for tr in on})
    drawn = 0
    for e in events:
        f = round(e.seconds * FPS)
        assert f % 2 == 0 and 0 < f < frames  # on a temporal patch boundary
        (i,) = [
            i for i, tr in enumerate(tracks) if tr.shape == e.shape and (tr.visible(f) or tr.visible(f - 1))
        ]
        before, after = tracks[i].visible(f - 1), tracks[i].visible(f)
        if e.kind == "appears":
            assert (before, after) == (False, True) and tracks[i].colour_at(f) == e.colour
        elif e.kind == "leaves":
            assert (before, after) == (True, False) and tracks[i].colour_at(f - 1) == e.colour
        else:
            assert before and after and tracks[i].colour_at(f - 1) == e.colour != e.new_colour
            assert tracks[i].colour_at(f) == e.new_colour
        drawn += bool((owner[f if after else f - 1] == i).any())
    assert drawn >= 0.9 * len(events)  # the object is on the pixels (rarely hidden behind another)


def test_written_video_has_the_length_and_events_beside_it(tmp_path) -> None:
    video = tmp_path / "w.mp4"
    events = write_video(video, 20, seed=1)
    info = probe(video)
    assert info.duration_seconds == pytest.approx(20, abs=0.6) and info.width == 168
    assert read_events(video) == events and events == make_timeline(20, seed=1)[1]


def test_mentions_find_objects_and_the_kind_in_their_clause() -> None:
    text = "The red circle appears, then the blue square leaves. A green cross turns yellow; purple triangle."
    assert mentions(text) == [
        Mention("appears", "circle", "red"),
        Mention("leaves", "square", "blue"),
        Mention("changes colour", "cross", "green"),
        Mention(None, "triangle", "purple"),
    ]
    assert mentions("blue") == [] and mentions("") == []
    assert mentions("the orange square changes color") == [Mention("changes colour", "square", "orange")]


def test_event_score_on_a_hand_written_summary() -> None:
    events = [
        Event(10.0, "appears", "circle", "red"),
        Event(40.0, "changes colour", "square", "blue", "green"),
        Event(70.0, "leaves", "circle", "red"),
        Event(95.0, "appears", "cross", "yellow"),
    ]
    windows = [
        (0.0, 30.0, "A red circle appears."),  # right
        (30.0, 60.0, "The green square changes colour and a red circle leaves."),  # right (new colour); wrong
        (60.0, 90.0, "The red circle."),  # the object, no kind: counts only for `objects`
        (90.0, 120.0, "The yellow cross leaves."),  # the wrong kind
    ]
    score = score_events(events, windows, tolerance=5.0)
    assert score["strict"] == {"recall": 2 / 4, "precision": 2 / 4, "named": 4, "recalled": 2, "right": 2}
    obj = score["objects"]  # every mention names an object with an event in its window, but 40 s's red circle
    assert obj["recalled"] == 4 and obj["named"] == 5 and obj["right"] == 4
    late = score_events(events, [(0.0, 30.0, ""), (30.0, 60.0, "the red circle leaves")], tolerance=5.0)
    assert late["strict"]["recall"] == 0 and late["strict"]["precision"] == 0  # 70 s is past 60 + 5
    near = score_events(events, [(0.0, 30.0, ""), (30.0, 60.0, "the red circle leaves")], tolerance=15.0)
    assert near["strict"]["recalled"] == 1 and near["strict"]["precision"] == 1.0
    silent = score_events(events, [(0.0, 120.0, "")])
    assert silent["strict"]["recall"] == 0 and silent["strict"]["precision"] is None
