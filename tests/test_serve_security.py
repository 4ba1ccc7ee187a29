"""`livevlm serve` security by default, against a real uvicorn server: the key on every route (WebSocket
included), no non-loopback bind without a key, sources confined to the allow-list and --media-dir, size and
rate limits, and a deleted stream's spill files gone."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from serve_fixtures import start_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from livevlm import SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig
from livevlm.errors import ConfigError
from livevlm.serve import ServeConfig, ServeLimits

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD = 120.0


@pytest.fixture(scope="module")
def spill_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spill")


@pytest.fixture(scope="module")
def server(tmp_path_factory, spill_root):
    media = tmp_path_factory.mktemp("media")
    (media / "inside.mp4").write_bytes(b"not really a video")
    (tmp_path_factory.mktemp("elsewhere") / "secret.mp4").write_bytes(b"secret")
    tiers = KVTiers(device_bytes=4096, cpu_bytes=4096, spill_dir=str(spill_root))  # spills from the 2nd chunk
    session = SessionConfig(kv=RetrievalConfig(window=1, top_k=1, tiers=tiers))
    limits = ServeLimits(max_streams=3, max_frame_bytes=200_000, max_frame_pixels=640 * 480, max_body_bytes=4096,
                         max_question_chars=100, questions_per_minute=5)  # fmt: skip
    srv = start_server(ServeConfig(session=session, api_key=KEY, media_dir=str(media), limits=limits))
    yield srv
    srv.stop()


def routes(sid: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/", None), ("GET", "/docs", None), ("GET", "/openapi.json", None), ("GET", "/v1/health", None),
        ("GET", "/v1/streams", None), ("POST", "/v1/streams", {"source": "push"}),
        ("GET", f"/v1/streams/{sid}", None), ("DELETE", f"/v1/streams/{sid}", None),
        ("GET", f"/v1/streams/{sid}/frame.jpg", None), ("POST", f"/v1/streams/{sid}/frames", None),
        ("POST", f"/v1/streams/{sid}/ask", {"question": "What colour?"}), ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": sid, "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/static/app.js", None),
    ]  # fmt: skip


def test_every_route_needs_the_key(server):
    sid = httpx.post(f"{server.url}/v1/streams", json={"source": "push"}, headers=AUTH).json()["id"]
    for method, path, body in routes(sid):
        for headers in ({}, {"Authorization": "Bearer wrong-key-000000"}, {"X-API-Key": "wrong-key-000000"}):
            r = httpx.request(method, server.url + path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code)
            assert "API key" in r.json()["error"]["message"]
    ws_url = server.url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=HANG_GUARD)
    assert refused.value.response.status_code == 401
    with connect(ws_url + f"?key={KEY}", open_timeout=HANG_GUARD) as ws:  # a browser's way: the key in the URL
        ws.send(b"\x89PNG\r\n\x1a\nbroken")
        assert json.loads(ws.recv(timeout=HANG_GUARD))["status"] == 422
    page = httpx.get(f"{server.url}/?key={KEY}")
    assert page.status_code == 200 and "livevlm_key" in page.headers["set-cookie"]
    cookie = {"livevlm_key": KEY}
    assert httpx.get(f"{server.url}/v1/streams/{sid}", cookies=cookie).status_code == 200  # the page's calls
    assert httpx.get(f"{server.url}/v1/streams/{sid}", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.delete(f"{server.url}/v1/streams/{sid}", headers=AUTH).status_code == 204


def test_non_loopback_bind_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("LIVEVLM_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="without an API key"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="0.0.0.0", api_key=KEY)  # with a key it is allowed
    ServeConfig(host="::1")  # loopback in IPv6
    with pytest.raises(ConfigError, match="printable ASCII"):  # a header could never carry it: no request would match
        ServeConfig(api_key="schlüssel-geheim")
    env = {k: v for k, v in os.environ.items() if k != "LIVEVLM_API_KEY"}
    cli = subprocess.run([sys.executable, "-m", "livevlm.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=HANG_GUARD, check=False)  # fmt: skip
    assert cli.returncode == 2 and "without an API key" in cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize(
    ("source", "status", "says"),
    [
        ("../elsewhere/secret.mp4", 403, "outside the media directory"),
        ("/etc/passwd", 403, "outside the media directory"),
        ("file:///etc/passwd", 403, "outside the media directory"),
        ("sub/../../x.mp4", 403, "outside the media directory"),
        ("missing.mp4", 404, "no file"),
        ("webcam:0", 403, "not allowed"),
        ("ftp://example.com/x.mp4", 403, "not allowed"),
        ("lavfi:movie=/etc/passwd", 403, "not allowed"),
        ("lavfi:testsrc,drawtext=textfile=/etc/passwd", 403, "not allowed"),
    ],
)
def test_sources_are_confined(server, source, status, says):
    r = httpx.post(f"{server.url}/v1/streams", json={"source": source}, headers=AUTH)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"]


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and IEND: a few bytes that say `width` x `height` (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_limits_answer_413_422_429_with_a_message(server):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}, headers=AUTH).json()["id"]
    big = httpx.post(f"{url}/v1/streams/{sid}/frames", content=b"\xff\xd8\xff" + b"\0" * 300_000,
                     headers={**AUTH, "content-type": "image/jpeg"})  # fmt: skip
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    huge = httpx.post(f"{url}/v1/streams/{sid}/frames?width=1000&height=1000", content=b"\0" * 1000,
                      headers={**AUTH, "content-type": "application/octet-stream"})  # fmt: skip
    assert huge.status_code == 413 and "pixels" in huge.json()["error"]["message"]
    bomb = httpx.post(f"{url}/v1/streams/{sid}/frames", content=png_header(20_000, 20_000),
                      headers={**AUTH, "content-type": "image/png"})  # fmt: skip
    assert bomb.status_code == 413 and "pixels" in bomb.json()["error"]["message"]  # Pillow's own bomb check
    junk = httpx.post(f"{url}/v1/streams/{sid}/frames", content=b"\x89PNG\r\n\x1a\n" + b"junk" * 10,
                      headers={**AUTH, "content-type": "image/png"})  # fmt: skip
    assert junk.status_code == 422 and "not a decodable PNG" in junk.json()["error"]["message"]
    assert "BytesIO" not in junk.json()["error"]["message"]
    body = httpx.post(f"{url}/v1/streams", content=json.dumps({"source": "push", "name": "x" * 5000}),
                      headers={**AUTH, "content-type": "application/json"})  # fmt: skip
    assert body.status_code == 413 and "request body" in body.json()["error"]["message"]
    long_q = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "why " * 30}, headers=AUTH)
    assert long_q.status_code == 422 and "over the limit of 100" in long_q.json()["error"]["message"]
    with connect(url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws?key={KEY}") as ws:
        ws.send(b"\xff\xd8\xff" + b"\0" * 300_000)
        reply = json.loads(ws.recv(timeout=HANG_GUARD))
        assert reply["type"] == "error" and reply["status"] == 413
    codes = [httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "What colour is the circle?",
                                                             "stream": False}, headers=AUTH).status_code
             for _ in range(7)]  # fmt: skip
    assert 429 in codes and codes.index(429) <= 5, codes
    limited = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "What colour?"}, headers=AUTH)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert httpx.delete(f"{url}/v1/streams/{sid}", headers=AUTH).status_code == 204


def test_stream_count_is_limited(server):
    ids = []
    for _ in range(3):
        r = httpx.post(f"{server.url}/v1/streams", json={"source": "push"}, headers=AUTH)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    over = httpx.post(f"{server.url}/v1/streams", json={"source": "push"}, headers=AUTH)
    assert over.status_code == 429 and "maximum of 3" in over.json()["error"]["message"]
    for sid in ids:
        assert httpx.delete(f"{server.url}/v1/streams/{sid}", headers=AUTH).status_code == 204


def test_deleted_stream_spill_files_are_gone(server, spill_root):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}, headers=AUTH).json()["id"]
    frame = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    for i in range(12):  # sent one by one, each waited for: nothing dropped
        r = httpx.post(f"{url}/v1/streams/{sid}/frames?width=112&height=112&pts={i * 0.5}", content=frame.tobytes(),
                       headers={**AUTH, "content-type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 202
        deadline = time.monotonic() + HANG_GUARD
        while httpx.get(f"{url}/v1/streams/{sid}", headers=AUTH).json()["status"]["frames_processed"] < i + 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    kv = httpx.get(f"{url}/v1/streams/{sid}", headers=AUTH).json()["stats"]["kv"]
    spilled = [p for p in spill_root.iterdir() if p.name.startswith("livevlm-kv-")]
    assert spilled and any(f.stat().st_size > 0 for p in spilled for f in p.iterdir()), kv
    assert httpx.delete(f"{url}/v1/streams/{sid}", headers=AUTH).status_code == 204
    assert not [p for p in spill_root.iterdir() if p.name.startswith("livevlm-kv-")]
