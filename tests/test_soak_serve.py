"""`livevlm serve` over many stream lifetimes: streams created and deleted, frames pushed over HTTP and the
WebSocket, answers streamed as SSE, clients that vanish mid-answer or mid-push. After it, the server holds no
thread, descriptor or spill dir of a deleted stream."""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import threading
import time

import httpx2 as httpx
import numpy as np
import pytest
from leaks import open_files
from serve_fixtures import start_server
from websockets.sync.client import connect

from livevlm import SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig
from livevlm.serve import ServeConfig, ServeLimits

HANG_GUARD = 60.0
W, H = 160, 120
LAVFI = f"lavfi:testsrc2=size={W}x{H}:rate=10"



def _sockets(fds: set[str]) -> int:
    return sum(f.startswith("socket:") for f in fds)


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a client that crashed or lost its network does (no FIN, no WebSocket close)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _ask_and_vanish(url: str, sid: str) -> None:
    """Start an SSE answer, read its first bytes, then drop the connection."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"question": "What colour is the circle?"}).encode()
    sock = socket.create_connection((host, int(port)), timeout=HANG_GUARD)
    sock.sendall(f"POST /v1/streams/{sid}/ask HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    _reset(sock)


def _push(url: str, sid: str, frame: bytes, vanish: bool) -> None:
    for i in range(3):
        r = httpx.post(f"{url}/v1/streams/{sid}/frames?pts={i * 0.5}&width={W}&height={H}", content=frame,
                       headers={"content-type": "application/octet-stream"}, timeout=HANG_GUARD)  # fmt: skip
        assert r.status_code == 202, r.text
    with connect(url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws", max_size=None) as ws:
        for i in range(3, 6):
            ws.send(json.dumps({"pts": i * 0.5, "format": "rgb", "width": W, "height": H}))
            ws.send(frame)
            assert json.loads(ws.recv(timeout=HANG_GUARD))["type"] == "ack"
        if vanish:
            _reset(ws.socket)  # (the close on leaving the block finds the socket gone)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_streams_created_and_deleted_in_a_loop_leave_nothing_behind(tmp_path):
    tiers = KVTiers(device_bytes=30_000, cpu_bytes=30_000, spill_dir=str(tmp_path))
    config = ServeConfig(session=SessionConfig(kv=RetrievalConfig(tiers=tiers), max_new_tokens=4),
                         limits=ServeLimits(questions_per_minute=0))  # fmt: skip
    server = start_server(config)
    url = server.url
    frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8).tobytes()
    try:
        counted = False
        for i in range(24):
            kind = "push" if i % 2 == 0 else LAVFI
            r = httpx.post(f"{url}/v1/streams", json={"source": kind}, timeout=HANG_GUARD)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            if kind == "push":
                _push(url, sid, frame, vanish=i % 4 == 0)
            if i % 3 == 0:
                _ask_and_vanish(url, sid)
            else:
                with httpx.stream("POST", f"{url}/v1/streams/{sid}/ask", json={"question": "What colour?"},
                                  timeout=HANG_GUARD) as answer:  # fmt: skip
                    assert answer.status_code == 200 and "event: done" in list(answer.iter_lines())
            assert httpx.delete(f"{url}/v1/streams/{sid}", timeout=HANG_GUARD).status_code == 204
            if not counted and i == 3:  # the server's own threads and sockets have all started by now
                time.sleep(0.5)
                gc.collect()
                threads, fds, counted = len(threading.enumerate()), open_files(), True
        assert httpx.get(f"{url}/v1/streams", timeout=HANG_GUARD).json()["streams"] == []
        deadline = time.monotonic() + HANG_GUARD
        while len(threading.enumerate()) > threads and time.monotonic() < deadline:
            time.sleep(0.05)  # the last deleted stream's threads end, the vanished clients' sockets close
        gc.collect()
        assert len(threading.enumerate()) <= threads, [t.name for t in threading.enumerate()]
        now = open_files()
        assert {f for f in now - fds if not f.startswith("socket:")} == set()
        assert _sockets(now) <= _sockets(fds)  # (socket inode names are reused: count them)
        assert os.listdir(tmp_path) == []  # every deleted stream's spill dir is gone
    finally:
        server.stop()
