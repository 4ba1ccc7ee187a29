"""Mistakes a new user makes through the Python API, each refused with a typed error that names it, and
counted where the README says so (found by trying the API as a stranger would). Real tiny checkpoints of the
real architectures and the bundled sample clip; nothing of ours is mocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import livevlm
from livevlm import ConfigError, FrameError, QuestionError, Session, SessionConfig
from livevlm.assets import sample_video_path
from livevlm.stream import read_frames

QUESTION = "What colour is the circle?"


@pytest.fixture(scope="module")
def frames() -> list:
    return read_frames(sample_video_path(), fps=2.0, max_frames=4)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"fps": "2"}, "fps must be a number, got str"),
        ({"fps": True}, "fps must be a number, got bool"),
        ({"fps": float("inf")}, "fps must be a finite number > 0"),
        ({"max_frames": 2.5}, "max_frames must be an integer or None"),
        ({"max_new_tokens": "64"}, "max_new_tokens must be an integer"),
        ({"dtype": "fp16"}, "dtype must be one of auto, float32, bfloat16, float16"),
        ({"device": 0}, "device must be a string"),
    ],
)
def test_session_config_refuses_wrong_types_at_construction(fields: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        SessionConfig(**fields)


def test_numpy_numbers_are_fine_in_a_config() -> None:
    config = SessionConfig(fps=np.float32(1.5), max_frames=np.int64(3))
    assert config.fps == 1.5 and config.max_frames == 3


def test_session_takes_a_session_config_not_a_dict(tiny_adapters) -> None:
    with pytest.raises(ConfigError, match=r"config must be a SessionConfig.*got dict.*SessionConfig\(\*\*options\)"):
        Session(tiny_adapters["qwen2_5_vl"], {"fps": 2.0})  # type: ignore[arg-type]


def test_ingest_of_something_that_is_not_frames_is_a_frame_error(tiny_adapters) -> None:
    with Session(tiny_adapters["qwen2_5_vl"]) as session, pytest.raises(FrameError, match="got int"):
        session.ingest(42)  # type: ignore[arg-type]


def test_save_with_a_file_in_the_way_is_a_snapshot_error(tiny_adapters, frames, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        session.ingest(frames)
        with pytest.raises(livevlm.SnapshotError, match="could not write the snapshot"):
            session.save(tmp_path / "notes.txt" / "snap")
        assert not [p for p in tmp_path.iterdir() if p.name != "notes.txt"]  # nothing half-written left


@pytest.mark.parametrize("budget", [0, -1, 2.5, True, "8"])
def test_an_answer_budget_that_is_not_a_positive_integer_is_refused(tiny_adapters, frames, budget) -> None:
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        session.ingest(frames)
        with pytest.raises(QuestionError, match="max_new_tokens must be a positive integer"):
            session.ask(QUESTION, budget)
        assert len(list(session.ask_ids(QUESTION, 1))) == 1  # the smallest budget there is


def test_choices_with_a_constraint_is_refused(tiny_adapters, frames) -> None:
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        session.ingest(frames)
        with pytest.raises(QuestionError, match="not both"):
            session.ask(QUESTION, choices=["red", "blue"], regex="red|blue")
        assert "".join(session.ask(QUESTION, choices=["red", "blue"])) in ("red", "blue")


def test_a_frame_too_small_is_refused_and_does_not_set_the_stream_size(tiny_adapters, frames) -> None:
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        for shape in ((1, 1, 3), (15, 64, 3), (64, 8, 3)):
            with pytest.raises(FrameError, match="too small: each side must be >= 16"):
                session.push(np.zeros(shape, np.uint8))
        session.ingest(frames)
        stats = session.stats
        assert stats.frames_rejected == 3 and stats.frames_seen == len(frames)
        assert session.latest_frame.data.shape == frames[0].data.shape  # the first good frame set the size


def test_a_malformed_non_blocking_push_is_raised_and_counted(tiny_adapters, frames) -> None:
    with Session(tiny_adapters["qwen2_5_vl"]) as session:
        with pytest.raises(FrameError, match="uint8"):
            session.push(frames[0].data.astype(np.float32), block=False)
        with pytest.raises(FrameError, match="pts_seconds must be a number of seconds, got str"):
            session.push(frames[0].data, "soon", block=False)  # type: ignore[arg-type]
        assert session.stats.frames_rejected == 2


def test_an_answer_budget_over_the_context_is_refused_when_the_session_starts(tiny_adapters) -> None:
    adapter = tiny_adapters["qwen2_5_vl"]
    with pytest.raises(ConfigError, match=f"max_new_tokens {10**9} does not fit the model's context of "
                                          f"{adapter.max_context} tokens"):  # fmt: skip
        Session(adapter, SessionConfig(kv="bilevel", max_new_tokens=10**9))  # not after ingesting a stream
    Session(adapter, SessionConfig(kv="bilevel", max_new_tokens=adapter.max_context // 2)).close()


@pytest.mark.parametrize("budget", [0, "0", "0M", -5])
def test_a_kv_budget_of_nothing_is_refused(budget) -> None:
    with pytest.raises(ConfigError, match="a KV budget must be a positive number of bytes"):
        SessionConfig(kv="bilevel", kv_budget=budget)


def test_a_question_over_the_context_is_one_clear_error(caplog) -> None:
    """Not preceded by the tokenizer's own 'sequence length is longer than ...' warning (a fresh tokenizer: it
    warns once per instance)."""
    from livevlm import ContextOverflowError, load_model

    with Session(load_model(None)) as session:
        session.ingest(read_frames(sample_video_path(), fps=2.0, max_frames=2))
        with caplog.at_level("WARNING"), pytest.raises(ContextOverflowError):
            session.ask("why " * 5000)
    assert not [r for r in caplog.records if "sequence length" in r.getMessage()]
