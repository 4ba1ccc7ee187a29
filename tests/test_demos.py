"""Smoke tests of demos/: each script runs as a user runs it (a subprocess, the bundled model, small
arguments), exits 0 and prints the lines its README promises; Ctrl-C ends a live demo cleanly."""

from __future__ import annotations

import ast
import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rtsp_server import RtspServer, require_rtsp

from livevlm.assets import sample_video_path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ("live_qa", "summarize_file", "robot_loop", "alerts")
PATHS = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # this checkout's livevlm and tools/
# one torch thread: on a busy 2-core machine two threads make the 4.9M-parameter model several times slower
ENV = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(PATHS)}
COLOURS = "red|green|blue|yellow|purple|orange"
SHAPES = "circle|square|triangle|cross"
PUBLIC = {"livevlm", "livevlm.assets", "livevlm.cache"}
STAMP = r"\[t=\s*\d+\.\ds\]"  # live_qa's stream time, e.g. [t=  2.5s]


def demo(name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, str(ROOT / "demos" / f"{name}.py"), *args],
        input=stdin, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300, check=False,
    )  # the timeout is a hang guard only
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res


@pytest.mark.parametrize("name", DEMOS)
def test_demo_is_short_documented_and_in_the_readme(name: str) -> None:
    source = (ROOT / "demos" / f"{name}.py").read_text()
    assert len(source.splitlines()) < 150
    assert f"demos/{name}.py" in (ROOT / "demos" / "README.md").read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("livevlm")} <= PUBLIC  # no private modules
    res = demo(name, "--help")
    assert res.stdout.startswith("usage:") and "--model" in res.stdout


def test_demos_share_their_helpers_instead_of_copying_them() -> None:
    """A helper two demos need lives once, in demos/_common.py (the flag type and the looped sample were copied)."""
    defined: dict[str, list[str]] = {}
    for name in DEMOS:
        tree = ast.parse((ROOT / "demos" / f"{name}.py").read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name != "main":
                defined.setdefault(node.name, []).append(name)
    assert {f: names for f, names in defined.items() if len(names) > 1} == {}


def test_live_qa_answers_repeated_questions_with_the_stream_time() -> None:
    q1, q2 = "What colour is the circle?", "What shape is the blue object?"
    res = demo("live_qa", "--question", q1, "--question", q2, "--every", "1", "--duration", "4")
    colours = re.findall(rf"^{STAMP} {re.escape(q1)} -> ({COLOURS})$", res.stdout, re.MULTILINE)
    shapes = re.findall(rf"^{STAMP} {re.escape(q2)} -> ({SHAPES})$", res.stdout, re.MULTILINE)
    assert colours and len(colours) == len(shapes), res.stdout
    assert "questions answered:" in res.stderr


def test_live_qa_answers_questions_from_stdin() -> None:
    res = demo("live_qa", "--duration", "5", stdin="What colour is the circle?\n\n")
    assert re.fullmatch(rf"{STAMP} What colour is the circle\? -> ({COLOURS})\n", res.stdout), res.stdout


def test_summarize_file_prints_merged_chapters_over_the_whole_sample() -> None:
    for segment in ("4", "2"):
        lines = demo("summarize_file", "--segment", segment).stdout.splitlines()
        spans = [re.fullmatch(rf"\[(\d\d):(\d\d)-(\d\d):(\d\d)\] ((?:{COLOURS}) (?:{SHAPES})(?:, )?)+", ln)
                 for ln in lines]  # fmt: skip
        assert lines and all(spans), lines
        ends = [(60 * int(m[1]) + int(m[2]), 60 * int(m[3]) + int(m[4])) for m in spans]
        assert ends[0][0] == 0 and ends[-1][1] == 8  # the sample is 8 s long
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ends))  # chapters follow each other
        texts = [ln.split("] ", 1)[1] for ln in lines]
        assert all(a != b for a, b in itertools.pairwise(texts))  # identical neighbours were merged
        assert "red circle" in texts[0]  # the sample's circle is red


def test_robot_loop_acts_on_each_answer() -> None:
    res = demo("robot_loop", "--duration", "6", "--leg", "3")
    step = rf"^t=(\d+\.\d)s answer=({COLOURS}) p=(\d\.\d\d) -> ([a-z ,]+) \(.*beacon was (\w+)\)$"
    steps = re.findall(step, res.stdout, re.MULTILINE)
    assert len(steps) == 6, res.stdout  # one decision per chunk (2 frames at 2 fps)
    expected = {"red": "turn left", "blue": "turn right"}
    for _, answer, p, action, _ in steps:
        assert action == (expected.get(answer, "straight on") if float(p) >= 0.5 else "unsure, hold course")
    assert sum(answer == beacon for _, answer, _, _, beacon in steps) >= 4  # it sees its beacons (red, blue)


@pytest.mark.parametrize("name, args", [
    ("robot_loop", ["--leg", "0"]), ("robot_loop", ["--fps", "0"]), ("robot_loop", ["--window", "0"]),
    ("robot_loop", ["--min-p", "5"]), ("robot_loop", ["--fps", "0.5"]),  # 3 s at 0.5 fps: not one 2-frame chunk
    ("alerts", ["--deadline", "0"]), ("alerts", ["--choices", "red"]), ("alerts", ["--question", " "]),
    ("live_qa", ["--deadline", "0"]), ("live_qa", ["--fps", "0"]), ("live_qa", ["--every", "-1"]),
])  # fmt: skip
def test_a_bad_argument_is_refused_before_the_demo_starts(name: str, args: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "demos" / f"{name}.py"), *args, "--duration", "3"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and f"{name}.py: error:" in res.stderr, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and not res.stdout


def _alert_lines(stdout: str) -> list[str]:
    alert = rf"^t=\d+\.\ds (?:first answer|ALERT \(was \w+\)): (?:{SHAPES}|unsure) \("
    return re.findall(alert, stdout, re.MULTILINE)


def test_alerts_on_the_looped_sample() -> None:
    res = demo("alerts", "--duration", "5")
    alerts = _alert_lines(res.stdout)
    assert alerts and "first answer" in alerts[0], res.stdout
    assert re.search(r"^\d+ answers, \d+ alerts$", res.stderr, re.MULTILINE)


def test_alerts_over_rtsp() -> None:
    require_rtsp()
    with RtspServer(sample_video_path()) as server:
        res = demo("alerts", server.url, "--duration", "6")
    assert _alert_lines(res.stdout) and server.url in res.stdout, res.stdout


def test_ctrl_c_stops_a_live_demo_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demos" / "live_qa.py"), "--question", "What colour is the circle?",
         "--duration", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "PYTHONFAULTHANDLER": "1"}, cwd=ROOT,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # watching and answering
        proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=60)  # a hang guard: the answer in flight ends within 2 s
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the fault handler prints every thread's stack
            pytest.fail(f"the demo did not stop after Ctrl-C; its threads:\n{proc.communicate(timeout=30)[1]}")
    finally:
        proc.kill()
    assert first.startswith("[t=") and proc.returncode == 130, (first, err)
    assert "interrupted" in err and "Traceback" not in err
