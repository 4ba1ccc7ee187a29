"""`livevlm serve` end to end: a real uvicorn server on 127.0.0.1 with the bundled model, fed over the
loopback RTSP server and over the push WebSocket, answered through SSE and the official `openai` client."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from openai import OpenAI
from PIL import Image
from serve_fixtures import start_server
from websockets.sync.client import connect

from livevlm.assets import sample_video_path
from livevlm.serve import ServeConfig
from livevlm.stream import read_frames

HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure
QUESTION = "What colour is the circle?"  # a question the bundled model answers on its sample clip ("red")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    (media / "sample.mp4").write_bytes(sample_video_path().read_bytes())
    srv = start_server(ServeConfig(media_dir=str(media)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """The sample clip's frames at 2 fps, JPEG-encoded as a camera app would send them."""
    out = []
    for frame in read_frames(str(sample_video_path()), fps=2.0):
        buf = io.BytesIO()
        Image.fromarray(frame.data).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def stream_status(url: str, sid: str) -> dict:
    r = httpx.get(f"{url}/v1/streams/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def push_over_websocket(url: str, sid: str, jpegs: list[bytes]) -> list[dict]:
    acks = []
    with connect(url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws") as ws:
        for i, data in enumerate(jpegs):
            ws.send(json.dumps({"pts": i * 0.5, "format": "jpeg"}))
            ws.send(data)
            acks.append(json.loads(ws.recv(timeout=HANG_GUARD)))
    return acks


def test_push_stream_over_websocket_answers_with_openai_client(server, jpegs):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push", "name": "cam"}).json()["id"]
    acks = push_over_websocket(url, sid, jpegs)
    assert [a["type"] for a in acks] == ["ack"] * len(jpegs)
    assert acks[-1]["frames_in"] == len(jpegs)
    # sent faster than real time: the keep-latest buffer may drop some, and says so; none is lost unaccounted
    def settled() -> bool:
        s = stream_status(url, sid)["status"]
        return s["frames_processed"] + s["frames_dropped"] == len(jpegs)

    wait_until(settled, "every frame ingested or counted as dropped")
    status = stream_status(url, sid)
    assert status["status"]["frames_processed"] >= 2
    assert status["status"]["last_pts_seconds"] == (len(jpegs) - 1) * 0.5  # the newest frame is never dropped
    assert status["stats"]["kv_tokens"] == status["status"]["context_tokens"] > 0

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert {m.id for m in client.models.list()} >= {"cam"}
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="cam", messages=messages)  # the stream by its name
    text = whole.choices[0].message.content
    assert text.strip() and whole.choices[0].finish_reason == "stop"
    extra = whole.model_extra["livevlm"]
    assert extra["stream_id"] == sid and extra["pts_range"] == [0.0, (len(jpegs) - 1) * 0.5]
    assert whole.usage.completion_tokens >= 1

    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="any", messages=messages, stream=True,
                                                extra_body={"stream_id": sid}):  # fmt: skip
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == text  # greedy over the same context: the same answer
    assert finish == "stop"


def test_rtsp_stream_answers_over_sse_and_openai(server, tmp_path):
    from rtsp_server import RtspServer, require_rtsp

    require_rtsp()
    with RtspServer(sample_video_path()) as rtsp:
        r = httpx.post(f"{server.url}/v1/streams", json={"source": rtsp.url}, timeout=HANG_GUARD)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["kind"] == "url"
        wait_until(lambda: stream_status(server.url, sid)["status"]["chunks"] >= 4, "4 chunks from RTSP")
        events = []
        with httpx.stream("POST", f"{server.url}/v1/streams/{sid}/ask", json={"question": QUESTION},
                          timeout=HANG_GUARD) as resp:  # fmt: skip
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
        kinds = [k for k, _ in events]
        assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"}
        done = events[-1][1]
        assert done["text"] == "".join(d["text"] for _, d in events[:-1]) and done["text"].strip()
        first, last = done["pts_range"]
        assert 0.0 <= first <= last and done["chunks"] >= 4

        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        reply = client.chat.completions.create(model=sid, messages=[{"role": "user", "content": QUESTION}])
        assert reply.choices[0].message.content.strip()
        streamed = client.chat.completions.create(model=sid, messages=[{"role": "user", "content": QUESTION}],
                                                  stream=True, stream_options={"include_usage": True})  # fmt: skip
        chunks = list(streamed)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip()
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        assert chunks[0].model_extra["livevlm"]["stream_id"] == sid
        jpeg = httpx.get(f"{server.url}/v1/streams/{sid}/frame.jpg")
        assert jpeg.status_code == 200 and jpeg.content.startswith(b"\xff\xd8")
        assert httpx.delete(f"{server.url}/v1/streams/{sid}").status_code == 204


def test_file_under_media_dir_and_lavfi_streams(server):
    url = server.url
    for source, kind in (("sample.mp4", "file"), ("lavfi:testsrc=size=64x48:rate=4", "lavfi")):
        r = httpx.post(f"{url}/v1/streams", json={"source": source}, timeout=HANG_GUARD)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["kind"] == kind
        wait_until(lambda sid=sid: stream_status(url, sid)["status"]["chunks"] >= 2, f"chunks from {source}")
        answer = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "stream": False},
                            timeout=HANG_GUARD)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["chunks"] >= 2
        assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204
        assert httpx.get(f"{url}/v1/streams/{sid}").status_code == 404


def test_post_frames_raw_rgb_and_errors_keep_the_stream(server):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:30, 20:40] = (200, 30, 30)
    ok = httpx.post(f"{url}/v1/streams/{sid}/frames?width=64&height=48&pts=0", content=frame.tobytes(),
                    headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert ok.status_code == 202, ok.text
    bad = httpx.post(f"{url}/v1/streams/{sid}/frames", content=b"not an image",
                     headers={"content-type": "image/jpeg"})  # fmt: skip
    assert bad.status_code == 422 and "JPEG" in bad.json()["error"]["message"]
    short = httpx.post(f"{url}/v1/streams/{sid}/frames?width=64&height=48", content=b"\0" * 10,
                       headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert short.status_code == 422 and "needs 9216 bytes" in short.json()["error"]["message"]
    again = httpx.post(f"{url}/v1/streams/{sid}/frames?width=64&height=48&pts=0.5", content=frame.tobytes(),
                       headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert again.status_code == 202 and again.json()["frames_in"] == 2  # nothing before the errors was lost
    back = httpx.post(f"{url}/v1/streams/{sid}/frames?width=64&height=48&pts=0.25", content=frame.tobytes(),
                      headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert back.status_code == 422 and "not after the stream's last frame" in back.json()["error"]["message"]
    tiny = httpx.post(f"{url}/v1/streams/{sid}/frames?width=1&height=1&pts=9", content=b"\0\0\0",
                      headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert tiny.status_code == 422 and "too small" in tiny.json()["error"]["message"]
    wait_until(lambda: stream_status(url, sid)["status"]["chunks"] == 1, "the chunk of the two good frames")
    assert stream_status(url, sid)["status"]["frames_rejected"] == 0  # refused at the door, not dropped later
    with connect(url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws") as ws:
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=HANG_GUARD))["status"] == 422
        ws.send(b"garbage")
        assert json.loads(ws.recv(timeout=HANG_GUARD))["status"] == 422
    assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204


def test_typed_errors_are_json_without_traces(server):
    url = server.url
    missing = httpx.get(f"{url}/v1/streams/nope")
    assert missing.status_code == 404 and "no stream 'nope'" in missing.json()["error"]["message"]
    bad_body = httpx.post(f"{url}/v1/streams", json={"nosource": 1})
    assert bad_body.status_code == 422 and "source" in bad_body.json()["error"]["message"]
    broken = httpx.post(f"{url}/v1/streams", content=b'{"source": "push",', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "the body is not valid JSON at character" in broken.json()["error"]["message"]
    as_text = httpx.post(f"{url}/v1/streams", content=b'{"source": "push"}', headers={"content-type": "text/plain"})
    assert as_text.status_code == 422 and "content-type: application/json; got text/plain" in as_text.text
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    empty = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": "   "})
    assert empty.status_code == 422 and "Traceback" not in empty.text
    early = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "within": [0, 1]})
    assert early.status_code == 409 and "nothing has been ingested yet" in early.json()["error"]["message"]  # no frame
    not_push = httpx.post(f"{url}/v1/streams", json={"source": "lavfi:testsrc=size=64x48:rate=2"}).json()["id"]
    refused = httpx.post(f"{url}/v1/streams/{not_push}/frames", content=b"x", headers={"content-type": "image/png"})
    assert refused.status_code == 409
    image_part = httpx.post(f"{url}/v1/chat/completions", json={"model": sid, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]})  # fmt: skip
    assert image_part.status_code == 422 and "send frames to the stream" in image_part.json()["error"]["message"]
    for tokens in ({"max_tokens": 0}, {"max_completion_tokens": -5}):
        zero = httpx.post(f"{url}/v1/chat/completions", json={"model": sid, **tokens, "messages": [
            {"role": "user", "content": QUESTION}]})  # fmt: skip
        assert zero.status_code == 422, (tokens, zero.text)
    both = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "choices": ["a", "b"],
                                                           "regex": "red|blue"})  # fmt: skip
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    for s in (sid, not_push):
        assert httpx.delete(f"{url}/v1/streams/{s}").status_code == 204


def test_page_and_openapi_are_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/streams", "/v1/streams/{sid}/ask", "/v1/chat/completions"} <= set(spec["paths"])
    assert Path(__file__).exists()


def test_choices_and_json_schema_answers(server, jpegs):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    for i, data in enumerate(jpegs[:4]):
        r = httpx.post(f"{url}/v1/streams/{sid}/frames?pts={i * 0.5}", content=data,
                       headers={"content-type": "image/jpeg"})  # fmt: skip
        assert r.status_code == 202
        wait_until(lambda i=i: stream_status(url, sid)["status"]["frames_processed"] == i + 1, "the frame")
    chosen = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "stream": False,
                        "choices": ["red", "green", "blue"]}, timeout=HANG_GUARD)  # fmt: skip
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["text"] in {"red", "green", "blue"} and chosen.json()["pts_range"] == [0.0, 1.5]
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]}
    reply = client.chat.completions.create(
        model=sid, messages=[{"role": "user", "content": QUESTION}], max_tokens=32,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )  # fmt: skip
    assert json.loads(reply.choices[0].message.content)["colour"] in {"red", "green", "blue"}
    assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204
