"""A URL to a file whose download breaks midway (the server closes the connection before Content-Length bytes):
the source opens it again with backoff and reads on from the last frame, so the frames equal the file's read
from disk; a server that keeps breaking ends the read with what it gave, said by `shortfall()`. Real servers on
127.0.0.1, with and without byte ranges."""

from __future__ import annotations

import http.server
import re
from pathlib import Path

import numpy as np
import pytest
from http_files import serving
from media import encode_lavfi

from livevlm.errors import SourceError
from livevlm.stream import FileSource, FileSourceConfig, ReconnectConfig, UrlSource, UrlSourceConfig

QUICK = ReconnectConfig(max_retries=2, initial_delay=0.05, max_delay=0.1)


def _breaking_handler(data: bytes, breaks: int, ranges: bool) -> tuple[type, list[str]]:
    """A handler sending `data` whose first `breaks` answers stop halfway (the connection closed); with `ranges`
    it answers a Range request with 206 and the bytes asked for, else always 200 and the whole file."""
    requests: list[str] = []

    class Breaking(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.headers.get("Range") or "")
            first = 0
            asked = re.fullmatch(r"bytes=(\d+)-\d*", self.headers.get("Range") or "")
            if ranges and asked:
                first = min(int(asked.group(1)), len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[first:]
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if len(requests) <= breaks:
                cut = max(0, len(data) // 2 - first)  # the break falls halfway through the file
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Breaking, requests


def _frames(source: object) -> list[tuple[float, int]]:
    return [(round(f.pts_seconds, 6), int(np.asarray(f.data, dtype=np.int64).sum())) for f in source]  # type: ignore[attr-defined]


def _read_url(url: str, **fields: object) -> tuple[list[tuple[float, int]], UrlSource]:
    with UrlSource(UrlSourceConfig(url, fps=4.0, read_timeout=2.0, **fields)) as src:  # type: ignore[arg-type]
        return _frames(src), src


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of 10 fps, its index first (as files served for streaming are), a keyframe each second."""
    return encode_lavfi(tmp_path_factory.mktemp("breaks") / "clip.mp4", seconds=6, fps=10, size=(96, 64),
                        faststart=True)  # fmt: skip


@pytest.mark.parametrize("ranges", [True, False], ids=["byte-ranges", "no-ranges"])
def test_a_download_that_breaks_once_reads_on_and_equals_the_file(clip: Path, ranges: bool) -> None:
    handler, requests = _breaking_handler(clip.read_bytes(), breaks=1, ranges=ranges)
    with FileSource(FileSourceConfig(clip, fps=4.0)) as local:
        expected = _frames(local)
    with serving(handler) as base:
        got, src = _read_url(f"{base}/clip.mp4", reconnect=QUICK)
    assert got == expected  # before: SourceError "cannot read ...: read failed: Input/output error"
    assert src.stats.disconnects == 1 and src.stats.reconnects == 1 and src.shortfall() is None
    assert len(requests) >= 2


def test_a_download_that_keeps_breaking_keeps_what_it_read_and_says_why(clip: Path) -> None:
    handler, _ = _breaking_handler(clip.read_bytes(), breaks=100, ranges=True)
    with FileSource(FileSourceConfig(clip, fps=4.0)) as local:
        expected = _frames(local)
    with serving(handler) as base:
        got, src = _read_url(f"{base}/clip.mp4", reconnect=QUICK)
        assert 0 < len(got) < len(expected) and got == expected[: len(got)]  # the first half, none twice
        assert src.stats.reconnects == 2
        short = src.shortfall() or ""
        assert "connection lost after" in short and "gave up after 2 failed reconnect attempts" in short, short
        assert re.search(r"stopped at [\d.]+ s of 6\.0 s", short), short
        with pytest.raises(SourceError, match="read failed"):  # no retry allowed: the break is an error, as before
            _read_url(f"{base}/clip.mp4", reconnect=ReconnectConfig(max_retries=0))
