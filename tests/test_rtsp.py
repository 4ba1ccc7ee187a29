"""RTSP against a real server on 127.0.0.1 (gst-rtsp-server, see tests/rtsp_server.py): UDP and TCP reads,
a server killed mid-stream and restarted, a server that never comes back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from media import make_stream_clip
from rtsp_server import RtspServer, require_rtsp

from livevlm import Session
from livevlm.errors import SourceDisconnectedError, SourceNotFoundError
from livevlm.stream import Frame, Ingestor, ReconnectConfig, UrlSource, UrlSourceConfig

HANG_GUARD = 60.0  # seconds; only there to turn a hang into a failure


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_rtsp()
    return make_stream_clip(tmp_path_factory.mktemp("rtsp") / "stream.mp4", seconds=30, fps=15)


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reads_over_udp_and_tcp_then_gives_up_on_a_dead_server(clip: Path, transport: str) -> None:
    with RtspServer(clip) as server:
        cfg = UrlSourceConfig(
            server.url,
            fps=5.0,
            transport=transport,
            read_timeout=3.0,
            reconnect=ReconnectConfig(max_retries=2, initial_delay=0.05),
        )
        src = UrlSource(cfg)
        assert src.live and src.spec.options["rtsp_transport"] == transport
        frames = [next(src) for _ in range(8)]
        server.stop()  # the server dies and never comes back
        with pytest.raises(SourceDisconnectedError, match="gave up after 2 failed reconnect attempts"):
            for _ in range(10_000):  # whatever was still buffered, then the typed error
                next(src)
        src.close()
    pts = np.array([f.pts_seconds for f in frames])
    assert pts[0] == 0.0
    np.testing.assert_allclose(np.diff(pts), 0.2, atol=1 / 15 + 1e-3)  # 5 fps out of a 15 fps stream
    assert all(f.data.shape == (240, 320, 3) for f in frames)
    assert len({f.data.tobytes() for f in frames}) == len(frames)  # real, moving content
    assert src.stats.disconnects == 1 and src.stats.reconnects == 0
    assert "refused" in (src.stats.last_error or "")


def test_unknown_stream_path_is_not_found(clip: Path) -> None:
    with RtspServer(clip) as server, pytest.raises(SourceNotFoundError, match="404"):
        UrlSource(UrlSourceConfig(server.url.replace("/clip", "/no-such-stream")))


def test_server_killed_mid_stream_then_restarted(clip: Path, tiny_adapters) -> None:
    session = Session(tiny_adapters["qwen2_5_vl"])
    server = RtspServer(clip).start()
    src = UrlSource(
        UrlSourceConfig(
            server.url,
            fps=4.0,
            read_timeout=3.0,
            reconnect=ReconnectConfig(max_retries=10, initial_delay=0.2, max_delay=1.0),
        )
    )
    pts: list[float] = []

    def sink(frame: Frame) -> None:
        session.push(frame)
        pts.append(frame.pts_seconds)

    ingestor = Ingestor(src, sink).start()
    try:
        wait_until(lambda: len(pts) >= 8, "frames before the cut")
        server.stop()  # mid-stream
        wait_until(lambda: ingestor.stats.source.disconnects >= 1, "the source to notice")
        before = len(pts)
        time.sleep(1.0)  # the outage
        server.start()
        wait_until(lambda: len(pts) >= before + 8, "frames after the reconnect")
    finally:
        ingestor.stop()
        server.stop()
    stats = ingestor.stats
    assert stats.error is None and stats.source.disconnects == 1 and stats.source.reconnects == 1
    # the gap shows in the timestamps and the stats
    assert stats.source.gap_seconds >= 1.0
    last_before, first_after = stats.source.last_gap  # last decoded frame before, first one after
    assert first_after - last_before >= 1.0
    steps = np.diff(pts)
    assert np.all(steps > 0)
    cut = int(np.argmax(steps))  # the one jump: the outage
    assert pts[cut] <= last_before and pts[cut + 1] == first_after
    assert np.all(np.delete(steps, cut) < 0.5)
    # everything ingested before the cut is still in the session, and the session goes on
    assert cut + 1 >= 8
    s = session.stats
    assert s.frames_seen == len(pts) and s.chunks == len(pts) // 2
    assert "".join(session.ask("What happened?", max_new_tokens=4))


def test_livevlm_ask_over_rtsp_takes_the_transport(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from livevlm.cli import main

    with RtspServer(clip) as server:
        rc = main(["ask", server.url, "What colour is the circle?", "--transport", "udp", "--max-frames", "4",
                   "--no-progress", "--stats", "--max-new-tokens", "2"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip() and "frames_seen=4" in err, err  # before: no --transport on ask (argparse exit 2)
