"""`Frame` and `FrameBatch`: validated data, both layouts, shapes in the repr."""

from __future__ import annotations

import numpy as np
import pytest

from livevlm.errors import FrameError
from livevlm.stream import Frame, FrameBatch


def rgb(h: int = 6, w: int = 8, value: int = 0) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_frame_layouts_and_repr() -> None:
    data = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    frame = Frame(data, 1.25, "cam0")
    assert (frame.height, frame.width) == (6, 8)
    chw = frame.chw()
    assert chw.shape == (3, 6, 8) and np.shares_memory(chw, data)
    assert np.array_equal(chw[1], data[:, :, 1])
    back = Frame.from_chw(chw, 1.25, "cam0")
    assert np.array_equal(back.data, data) and back.data.flags.c_contiguous
    assert repr(frame) == "Frame(shape=(6, 8, 3), pts_seconds=1.250, source_id='cam0')"


@pytest.mark.parametrize(
    ("data", "pts", "match"),
    [
        (rgb().astype(np.float32), 0.0, "uint8"),
        (rgb()[:, :, :2], 0.0, r"\(H, W, 3\)"),
        (rgb()[0], 0.0, r"\(H, W, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), 0.0, "empty side"),
        ([[0, 0, 0]], 0.0, "numpy array"),
        (rgb(), float("nan"), "finite"),
        (rgb(), "soon", "finite"),
    ],
)
def test_frame_rejects_bad_input(data: object, pts: object, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        Frame(data, pts)  # type: ignore[arg-type]


def test_from_chw_rejects_hwc() -> None:
    with pytest.raises(FrameError, match=r"\(3, H, W\)"):
        Frame.from_chw(rgb(6, 8), 0.0)


def test_frame_batch() -> None:
    frames = [Frame(rgb(value=i), 0.5 * i, "f") for i in range(4)]
    batch = FrameBatch.from_frames(frames)
    assert len(batch) == 4 and batch.data.shape == (4, 6, 8, 3) and batch.chw().shape == (4, 3, 6, 8)
    assert batch.pts_seconds.dtype == np.float64
    assert [f.pts_seconds for f in batch] == [0.0, 0.5, 1.0, 1.5]
    assert int(batch[2].data[0, 0, 0]) == 2 and batch[2].source_id == "f"
    assert repr(batch) == "FrameBatch(shape=(4, 6, 8, 3), pts_seconds=0.000..1.500, source_id='f')"


def test_frame_batch_rejects_bad_input() -> None:
    with pytest.raises(FrameError, match="one shape"):
        FrameBatch.from_frames([Frame(rgb(6, 8), 0.0), Frame(rgb(4, 8), 0.1)])
    with pytest.raises(FrameError, match="at least one"):
        FrameBatch.from_frames([])
    with pytest.raises(FrameError, match="non-decreasing"):
        FrameBatch(np.zeros((2, 4, 4, 3), np.uint8), np.array([1.0, 0.5]))
    with pytest.raises(FrameError, match=r"shape \(2,\)"):
        FrameBatch(np.zeros((2, 4, 4, 3), np.uint8), np.array([0.0]))
    with pytest.raises(FrameError, match=r"\(N, H, W, 3\)"):
        FrameBatch(rgb(), np.array([0.0]))
