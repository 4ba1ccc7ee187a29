"""An MPEG-TS file served by an HTTP server that ignores byte ranges (Python's http.server) has no duration
FFmpeg can find without seeking to its end; its Content-Length still says it ends. It is read as its local path
is, and `livevlm ask` answers over it (before: taken for an endless live stream and refused). The same bytes
sent chunked, of unknown length, as a live HTTP stream is, still count as endless."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from http_files import serving, serving_files
from media import encode_lavfi

from livevlm.errors import ConfigError
from livevlm.stream import open_source


def _remux_to_ts(src: Path, out: Path) -> Path:
    with av.open(str(src)) as inp, av.open(str(out), "w", format="mpegts") as dst:
        video = inp.streams.video[0]
        stream = dst.add_stream_from_template(video)
        for packet in inp.demux(video):
            if packet.dts is not None:  # not the demuxer's final flush packet
                packet.stream = stream
                dst.mux(packet)
    return out


def _chunked_handler(data: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Chunked(http.server.BaseHTTPRequestHandler):
        """`data` sent with Transfer-Encoding: chunked and no Content-Length, as a live HTTP stream is."""

        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 4096):
                piece = data[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

    return Chunked


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A 4 s MPEG-TS clip at 5 fps: its path, its URL without byte ranges, its URL sent chunked."""
    root = tmp_path_factory.mktemp("ts")
    clip = _remux_to_ts(encode_lavfi(root / "clip.mp4", seconds=4, fps=5, size=(64, 48)), root / "clip.ts")
    with serving_files(root) as files, serving(_chunked_handler(clip.read_bytes())) as chunked:  # Range ignored
        yield clip, f"{files}/clip.ts", f"{chunked}/clip.ts"


def test_a_ts_file_without_byte_ranges_ends_and_reads_as_its_path(served: tuple[Path, str, str]) -> None:
    path, url, _ = served
    with av.open(url) as probe:
        assert probe.duration is None  # what made it look endless: no duration without seeking to the end
    with open_source(str(path), fps=2.0, realtime=False) as local_source:
        local = list(local_source)
    with open_source(url, fps=2.0, realtime=False) as remote_source:
        assert not remote_source.live and not remote_source.endless  # was: endless
        remote = list(remote_source)
    assert len(local) == 8
    assert [f.pts_seconds for f in remote] == [f.pts_seconds for f in local]
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_the_same_bytes_sent_chunked_stay_endless(served: tuple[Path, str, str]) -> None:
    _, _, chunked = served
    with open_source(chunked, fps=2.0, realtime=False) as source:
        assert source.endless  # no length: may be a live stream; `ask` asks for --max-frames
        assert len([next(source) for _ in range(3)]) == 3


def test_a_chunked_stream_that_ends_says_so_and_reconnects_when_live(served: tuple[Path, str, str]) -> None:
    _, _, chunked = served
    with open_source(chunked, fps=2.0, realtime=False) as source:
        assert len(list(source)) == 8 and source.stats.reconnects == 0
        assert "declares no length" in (source.shortfall() or "")  # before: it ended without a word (watch exit 0)
    with open_source(chunked, fps=2.0, realtime=False, live=True, max_frames=12) as source:
        times = [f.pts_seconds for f in source]
        assert len(times) == 12 and source.stats.reconnects == 1  # the end was a drop: opened again
        assert times == sorted(times) and source.shortfall() is None
    with pytest.raises(ConfigError, match="applies to a URL"):
        open_source("lavfi:testsrc2", live=True)


def test_watch_warns_when_a_stream_without_length_ends(served: tuple[Path, str, str], tmp_path: Path) -> None:
    _, _, chunked = served
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "livevlm.cli", "watch", chunked, "--fast", "--status-every", "0"],
                          input="", capture_output=True, text=True, env=env, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0 and "declares no length" in done.stderr and "--live" in done.stderr, done.stderr


def test_livevlm_ask_answers_over_a_ts_url_without_byte_ranges(served: tuple[Path, str, str], tmp_path: Path) -> None:
    _, url, chunked = served
    env = dict(os.environ, LIVEVLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")

    def ask(source: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "livevlm.cli", "ask", source, "What colour is the circle?",
                               "--stats", "--no-progress"], capture_output=True, text=True, env=env,
                              timeout=600, check=False)  # fmt: skip

    answered = ask(url)
    assert answered.returncode == 0, answered.stderr  # was 2: "... never ends (a camera, a live stream ...)"
    assert answered.stdout.strip() and "frames_seen=8" in answered.stderr
    refused = ask(chunked)
    assert refused.returncode == 2 and "never ends" in refused.stderr and "--max-frames" in refused.stderr


def test_session_ingest_refuses_an_endless_url_unless_bounded(served: tuple[Path, str, str]) -> None:
    """`Session.ingest(live URL)` never returned (an RTSP clip's every end was a reconnect)."""
    from livevlm import Session, SessionConfig, UnboundedSourceError

    _, _, chunked = served
    with Session() as session, pytest.raises(UnboundedSourceError, match=r"never ends .*SessionConfig\(max_frames=N\)"):
        session.ingest(chunked)
    with Session(config=SessionConfig(max_frames=4)) as session:
        assert session.ingest(chunked) == 4
