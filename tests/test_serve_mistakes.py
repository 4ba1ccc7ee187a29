"""`livevlm serve` mistakes and abuse found by trying it as a client developer (session 23), against a real uvicorn
server on 127.0.0.1 with the bundled model: frames the session would drop are refused at push (422, not a 202 then
lost), a keyless server refuses other sites' pages and other Host names, made-up keys buy no rate allowance, a
stream answering is not idle, 405 names every method, a null chat text part is a 422."""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import numpy as np
import pytest
from serve_fixtures import start_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from livevlm.assets import sample_video_path
from livevlm.serve import ServeConfig, ServeLimits
from livevlm.serve.frames import encode_jpeg
from livevlm.stream import read_frames

HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure
IDLE_S = 0.5
QUESTION = "What colour is the circle?"


@pytest.fixture(scope="module")
def server():
    limits = ServeLimits(questions_per_minute=0, idle_timeout_s=IDLE_S, max_new_tokens=2000, max_streams=8)
    srv = start_server(ServeConfig(limits=limits))
    yield srv
    srv.stop()


@pytest.fixture
def limited_server():
    srv = start_server(ServeConfig(limits=ServeLimits(questions_per_minute=3)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.ascontiguousarray(read_frames(str(sample_video_path()), fps=2.0, max_frames=1)[0].data)


def new_stream(url: str) -> str:
    r = httpx.post(f"{url}/v1/streams", json={"source": "push"}, timeout=HANG_GUARD)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def push(url: str, sid: str, data: np.ndarray, pts: float | str | None = None, **headers: str) -> httpx.Response:
    query = f"width={data.shape[1]}&height={data.shape[0]}" + (f"&pts={pts}" if pts is not None else "")
    return httpx.post(f"{url}/v1/streams/{sid}/frames?{query}", content=data.tobytes(), timeout=HANG_GUARD,
                      headers={"content-type": "application/octet-stream", **headers})  # fmt: skip


@pytest.mark.parametrize(("pts", "says"), [(1733250000.0, "an epoch time"), ("1e308", "got 1e+308")])
def test_a_time_the_session_would_refuse_is_a_422_at_push(server, frame, pts, says) -> None:
    """An epoch time was a 202 and then dropped by the session (the ask after: 'no frame has been pushed');
    1e308 then made every later frame 'not after the stream's last frame'."""
    sid = new_stream(server.url)
    r = push(server.url, sid, frame, pts)
    assert r.status_code == 422 and says in r.json()["error"]["message"], r.text
    assert push(server.url, sid, frame, 0.0).status_code == 202  # the stream still takes frames
    assert push(server.url, sid, frame, 0.5).status_code == 202


def test_a_first_frame_the_model_refuses_is_a_422_at_push(server, frame) -> None:
    """A 5000x16 frame (aspect 312:1) was a 202, then dropped: the model's own reason never reached the client."""
    sid = new_stream(server.url)
    thin = np.zeros((16, 5000, 3), np.uint8)
    r = push(server.url, sid, thin, 0.0)
    assert r.status_code == 422 and "aspect ratio of 312.5:1" in r.json()["error"]["message"], r.text
    assert push(server.url, sid, frame, 0.0).status_code == 202


def test_a_keyless_server_refuses_other_sites_pages_and_other_host_names(server, frame) -> None:
    url, port = server.url, server.url.rsplit(":", 1)[1]
    sid = new_stream(url)
    evil = {"origin": "https://evil.example"}
    r = push(url, sid, frame, 0.0, **evil)
    assert r.status_code == 403 and "evil.example" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION}, headers=evil, timeout=HANG_GUARD)
    assert r.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{port}/v1/streams/{sid}/ws", origin="https://evil.example", open_timeout=30)
    assert refused.value.response.status_code == 403
    r = httpx.get(f"{url}/v1/streams", headers={"host": f"attacker.example:{port}"}, timeout=HANG_GUARD)
    assert r.status_code == 403 and "Host 'attacker.example" in r.json()["error"]["message"], r.text
    # its own page (same origin), localhost and programs without an Origin are served
    assert push(url, sid, frame, 0.0, origin=f"http://127.0.0.1:{port}").status_code == 202
    assert httpx.get(f"{url}/v1/streams", headers={"host": f"localhost:{port}"}).status_code == 200
    with connect(f"ws://127.0.0.1:{port}/v1/streams/{sid}/ws", origin=f"http://127.0.0.1:{port}",
                 open_timeout=30) as ws:  # fmt: skip
        ws.send(encode_jpeg(frame))
        ack = json.loads(ws.recv(timeout=HANG_GUARD))
        assert ack["type"] == "ack" and ack["accepted"] is True, ack


def test_made_up_keys_buy_no_questions_on_a_keyless_server(limited_server, frame) -> None:
    """Each new Bearer value was a new rate-limit client: eight 200s at 3 per minute."""
    url = limited_server.url
    sid = new_stream(url)
    assert push(url, sid, frame, 0.0).status_code == 202
    codes = []
    for i in range(5):
        r = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": 1},
                       headers={"Authorization": f"Bearer made-up-{i}", "X-API-Key": f"k{i}"},
                       timeout=HANG_GUARD)  # fmt: skip
        codes.append(r.status_code)
    assert codes == [200, 200, 200, 429, 429], codes


def test_a_stream_answering_is_not_closed_as_idle(server, frame) -> None:
    """The reaper closed a stream whose answer outlasted --idle-timeout (410 mid-answer)."""
    sid = new_stream(server.url)
    assert push(server.url, sid, frame, 0.0).status_code == 202
    start = time.monotonic()
    with httpx.stream("POST", f"{server.url}/v1/streams/{sid}/ask", timeout=HANG_GUARD,
                      json={"question": QUESTION, "max_tokens": 1500, "regex": "(red ){1400}",
                            "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        events = [line for line in r.iter_lines() if line.startswith("event:")]
    elapsed = time.monotonic() - start
    assert elapsed > 4 * IDLE_S, f"the answer took {elapsed:.2f} s: too short to outlast the idle timeout"
    assert events[-1] == "event: done", events[-3:]
    assert httpx.get(f"{server.url}/v1/streams/{sid}", timeout=HANG_GUARD).status_code == 200


def test_405_names_every_method_of_the_path(server) -> None:
    r = httpx.put(f"{server.url}/v1/streams", timeout=HANG_GUARD)
    assert r.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers
    assert "takes" in r.json()["error"]["message"] and "POST" in r.json()["error"]["message"]


def test_a_null_chat_text_part_is_a_422(server, frame) -> None:
    """It was asked as the question 'None'."""
    sid = new_stream(server.url)
    body = {"model": sid, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=HANG_GUARD)
    assert r.status_code == 422 and "must be a string, got NoneType" in r.json()["error"]["message"], r.text


def test_a_blank_source_is_a_422_not_a_403(server) -> None:
    r = httpx.post(f"{server.url}/v1/streams", json={"source": "  "}, timeout=HANG_GUARD)
    assert r.status_code == 422, r.text


def test_a_body_nested_too_deeply_is_a_422_that_says_so(server) -> None:
    """FastAPI's own 400 'There was an error parsing the body' was the one error that named nothing."""
    body = "[" * 20000 + "]" * 20000
    r = httpx.post(f"{server.url}/v1/streams", content=body, headers={"content-type": "application/json"},
                   timeout=HANG_GUARD)  # fmt: skip
    assert r.status_code == 422 and "could not be read as JSON" in r.json()["error"]["message"], r.text
