"""A frame far wider than tall (4000x16) is over the Qwen-VL models' input limit of 200:1: the error says so in
one line, with the frame's size, the limit and what fixes it (crop, pad or resize), pushed or read from a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import encode_lavfi

from livevlm import FrameError, Session, SessionConfig, load_model
from livevlm.models.qwen3_vl import clip_smart_resize

SAYS = (
    "frame of 4000x16 pixels has an aspect ratio of 250.0:1, over this model's input limit of 200:1: "
    "crop it (e.g. to 3200x16), pad it (e.g. to 4000x20) or resize it"
)


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="float32")


def test_pushing_an_extreme_frame_names_its_size_the_limit_and_the_fix(model) -> None:
    with Session(model, SessionConfig(fps=2.0)) as session:
        with pytest.raises(FrameError) as caught:
            session.push(np.zeros((16, 4000, 3), np.uint8), 0.0)
        assert SAYS in str(caught.value) and "\n" not in str(caught.value)
        assert session.stats.frames_rejected == 1 and session.stats.frames_seen == 0


def test_a_tall_frame_gets_the_crop_and_pad_turned_the_same_way(model) -> None:
    with Session(model) as session, pytest.raises(FrameError, match=r"to 16x3200\), pad it \(e.g. to 20x4000\)"):
        session.push(np.zeros((4000, 16, 3), np.uint8), 0.0)


def test_an_extreme_first_frame_does_not_set_the_stream_size(model) -> None:
    with Session(model, SessionConfig(fps=2.0)) as session:
        with pytest.raises(FrameError):
            session.push(np.zeros((16, 4000, 3), np.uint8), 0.0)
        for i in range(1, 5):
            session.push(np.zeros((48, 64, 3), np.uint8), i / 2)
        assert session.stats.chunks == 2


def test_qwen3_clips_name_the_frame_as_given() -> None:
    with pytest.raises(FrameError, match="frame of 4000x8 pixels has an aspect ratio of 500.0:1"):
        clip_smart_resize(2, 8, 4000, 32, 2, 128 * 32 * 32, 768 * 32 * 32)  # scaled up to 32 high first


def test_livevlm_ask_on_an_extreme_video_says_it_in_one_line(tmp_path: Path) -> None:
    clip = encode_lavfi(tmp_path / "strip.mp4", seconds=1, fps=4, size=(4000, 16))
    res = subprocess.run(
        [sys.executable, "-m", "livevlm.cli", "ask", str(clip), "What colour is the circle?", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, LIVEVLM_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1"),
        timeout=600,
    )
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("livevlm: error:")]
    assert len(errors) == 1 and SAYS in errors[0], res.stderr
