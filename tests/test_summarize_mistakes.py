"""`livevlm summarize` (and the other commands) fed what a stranger fed them in session 23's try-out: its own
video as --out, a recording named by its time ("10:30.mp4"), a video whose every frame is refused, /dev/stdout on a
pipe, fps 1e9, a closed stdout, Ctrl-C before the first segment, two runs on one --out. Real files, the bundled
model, the command in-process or in a subprocess as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from media import make_vfr_clip
from terminal import as_at_a_terminal

from livevlm.assets import sample_video_path
from livevlm.cli import main
from livevlm.stream import probe, read_frames

SAMPLE = sample_video_path()
HANG_GUARD = 300.0  # seconds; only there to turn a hang into a failure


def cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen(as_at_a_terminal([sys.executable, "-m", "livevlm", *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)  # fmt: skip


def test_out_naming_the_video_itself_is_refused_and_the_video_kept(tmp_path, capsys) -> None:
    """It replaced the video with 134 bytes of Markdown (exit 0)."""
    video = tmp_path / "clip.mp4"
    shutil.copy(SAMPLE, video)
    (tmp_path / "link.md").symlink_to(video)
    before = video.read_bytes()
    for out in (video, tmp_path / "link.md"):
        assert main(["summarize", str(video), "--out", str(out), "--no-progress"]) == 2
        assert "is the video being summarized" in capsys.readouterr().err
    assert video.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "link.md"]


def test_an_out_suffix_naming_another_format_is_refused_before_any_work(tmp_path, capsys) -> None:
    """`--out summary.pdf` wrote Markdown into summary.pdf (exit 0); a bare name or .txt is Markdown, and --format
    says what goes into any name."""
    assert main(["summarize", str(SAMPLE), "--out", str(tmp_path / "summary.pdf"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "summary.pdf: a .pdf file cannot be written" in err and "--format" in err
    assert not list(tmp_path.iterdir())  # no state, no output
    assert main(["summarize", str(SAMPLE), "--out", str(tmp_path / "summary.pdf"), "--format", "json",
                 "--no-progress", "--max-frames", "4"]) == 0  # fmt: skip
    assert (tmp_path / "summary.pdf").read_text().lstrip().startswith("{")
    assert main(["summarize", str(SAMPLE), "--out", str(tmp_path / "notes"), "--no-progress", "--max-frames", "4"]) == 0
    assert (tmp_path / "notes").read_text().startswith("#")


def test_a_relative_file_name_with_a_colon_opens(tmp_path, monkeypatch) -> None:
    """FFmpeg read '2024-05-01T10' as a protocol name ('not a video ... Protocol not found')."""
    for name in ("2024-05-01T10:30:00.mp4", "lavfi:x.mp4"):
        shutil.copy(SAMPLE, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert probe("2024-05-01T10:30:00.mp4").duration_seconds == pytest.approx(probe(SAMPLE).duration_seconds)
    assert len(read_frames("2024-05-01T10:30:00.mp4", fps=2.0, max_frames=3)) == 3
    assert main(["ask", "lavfi:x.mp4", "What colour is the circle?", "--no-progress", "--max-frames", "4"]) == 0


def test_a_video_whose_every_frame_is_refused_is_an_error_not_an_empty_summary(tmp_path, capsys) -> None:
    """64x8 frames (under 16 px): exit 0 with "frames": 0 and no word (ask said why)."""
    clip = make_vfr_clip(tmp_path / "thin.mp4", [i / 2 for i in range(6)], size=(64, 8))
    out = tmp_path / "thin.json"
    assert main(["summarize", str(clip), "--segment", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no frame of" in err and "frame of 64x8 pixels is too small" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thin.mp4"]  # no output, no state left


def test_out_dev_stdout_on_a_pipe_writes_the_summary(tmp_path) -> None:
    """It looked for a resume state folder beside '/proc/PID/fd/pipe:[N]' (exit 2)."""
    proc = cli("summarize", str(SAMPLE), "--segment", "4", "--out", "/dev/stdout", "--no-progress", cwd=tmp_path)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err
    assert out.startswith("# ") and "0:00" in out, out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["ask", str(SAMPLE), "q"], ["summarize", str(SAMPLE)]])
def test_an_absurd_fps_is_a_config_error(command, capsys) -> None:
    """--fps 1e9 was a MemoryError traceback (ask) or gigabytes of RSS (sink_window, watch)."""
    assert main([*command, "--fps", "1e9", "--no-progress"]) == 2
    assert "fps must be at most 1000 frames per second" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly(tmp_path) -> None:
    """`livevlm sample | true`: a BrokenPipeError traceback, exit 1."""
    proc = cli("sample", cwd=tmp_path)
    proc.stdout.close()  # before the command prints (it is still importing)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 141 and "Traceback" not in err, err


def test_ctrl_c_before_the_first_segment_leaves_nothing_and_a_second_run_is_refused_meanwhile(tmp_path) -> None:
    """Ctrl-C before any segment left an empty OUT.partial/ that made the next plain run ask for --resume; two
    runs on one --out wrote into the same state at once."""
    out = tmp_path / "long.md"
    state = tmp_path / "long.md.partial" / "state.json"
    args = ("summarize", str(SAMPLE), "--fps", "200", "--segment", "100", "--out", str(out), "--no-progress")
    first = cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + HANG_GUARD
    while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.is_file(), first.communicate()[1]
    first.send_signal(signal.SIGSTOP)  # paused, its lock held: however fast this machine, it is still running below
    for extra in (("--resume",), ()):
        second = cli(*args, *extra, cwd=tmp_path)
        _, err = second.communicate(timeout=HANG_GUARD)
        assert second.returncode == 2 and "another summarize run is writing" in err, err
    assert first.poll() is None, "the first run ended before it could be paused: give it a longer video"
    first.send_signal(signal.SIGCONT)  # running again (as a user presses Ctrl-C on a running command)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=HANG_GUARD)
    assert first.returncode == 130, f"exit {first.returncode}: {err}"
    assert "finished segments are kept" not in err  # there are none
    assert not list(tmp_path.iterdir())  # no OUT.partial/ left to ask for --resume
