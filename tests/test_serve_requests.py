"""`livevlm serve` against requests real clients send: OpenAI's `stop`, tools and logprobs, an image pasted into a
chat message, a multipart frame upload, frames with and without pts, odd WebSocket metadata, an unbounded
deadline, and a client that leaves before its (non-streamed) answer is done. A real uvicorn server on 127.0.0.1
runs a tiny random Qwen2-VL checkpoint (saved and reloaded), whose answers are long and deterministic."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx2 as httpx
import numpy as np
import pytest
from openai import NotFoundError, OpenAI, UnprocessableEntityError
from PIL import Image
from serve_fixtures import start_server
from websockets.sync.client import connect

from livevlm import SessionConfig
from livevlm.errors import ConfigError
from livevlm.serve import ServeConfig, ServeLimits

HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure
QUESTION = "Describe the scene."
LONG = 2000  # tokens a client may ask for here (the tiny random model rarely ends earlier)


@pytest.fixture(scope="module")
def server(tiny_checkpoints):
    session = SessionConfig(model=tiny_checkpoints["qwen2_vl"], max_new_tokens=48)
    srv = start_server(ServeConfig(session=session, limits=ServeLimits(max_new_tokens=LONG)))
    yield srv
    srv.stop()


def jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG")
    return out.getvalue()


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def status(url: str, sid: str) -> dict:
    return httpx.get(f"{url}/v1/streams/{sid}").json()


@pytest.fixture
def stream(server):
    """A push stream with two frames ingested (so its answers are fixed); deleted afterwards."""
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    for i in range(2):
        r = httpx.post(f"{url}/v1/streams/{sid}/frames?pts={i * 0.5}", content=jpeg(i),
                       headers={"content-type": "image/jpeg"})  # fmt: skip
        assert r.status_code == 202, r.text
    wait_until(lambda: status(url, sid)["status"]["chunks"] == 1, "the frames' chunk")
    yield sid
    httpx.delete(f"{url}/v1/streams/{sid}")


def test_openai_stop_strings_end_the_answer(server, stream):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model=stream, messages=messages)
    text = full.choices[0].message.content
    assert len(text) > 12, text
    stop = text[8:12]
    expected = text[: text.find(stop)]

    cut = client.chat.completions.create(model=stream, messages=messages, stop=["never-in-it-%%", stop])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens  # decoding stopped there too

    pieces, finish = [], None
    for chunk in client.chat.completions.create(model=stream, messages=messages, stop=stop, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == expected and finish == "stop"  # no part of the stop string was streamed

    missing = client.chat.completions.create(model=stream, messages=messages, stop="never-in-it-%%")
    assert missing.choices[0].message.content == text

    with pytest.raises(UnprocessableEntityError, match="stop must be up to 4"):
        client.chat.completions.create(model=stream, messages=messages, stop=["a", "b", "c", "d", "e"])


def ask_json(url: str, sid: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "stream": False, **body},
                      timeout=HANG_GUARD)  # fmt: skip


def test_ask_takes_stop_strings_like_the_chat_endpoint(server, stream):
    """POST /ask honours `stop` as /v1/chat/completions does: cut before the first, left out, finish 'stop'."""
    url = server.url
    full = ask_json(url, stream).json()
    text = full["text"]
    assert len(text) > 12, text
    stop = text[8:12]
    expected = text[: text.find(stop)]

    cut = ask_json(url, stream, stop=["never-in-it-%%", stop])
    assert cut.status_code == 200, cut.text  # was: the field was ignored, the whole answer came back
    assert cut.json()["text"] == expected and cut.json()["finish_reason"] == "stop"
    assert cut.json()["tokens"] < full["tokens"]  # decoding stopped there too

    deltas, done = [], None
    with httpx.stream("POST", f"{url}/v1/streams/{stream}/ask", json={"question": QUESTION, "stop": stop},
                      timeout=HANG_GUARD) as resp:  # fmt: skip
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "delta":
                    deltas.append(data["text"])
                elif event == "done":
                    done = data
    assert "".join(deltas) == expected and done["text"] == expected and done["finish_reason"] == "stop"

    assert ask_json(url, stream, stop="never-in-it-%%").json()["text"] == text
    for bad, says in ((["a", "b", "c", "d", "e"], "stop must be up to 4"), ([""], "stop must be up to 4"),
                      ("x", "stop cannot be combined with choices")):  # fmt: skip
        extra = {"choices": ["yes", "no"]} if says.startswith("stop cannot") else {}
        r = ask_json(url, stream, stop=bad, **extra)
        assert r.status_code == 422 and says in r.json()["error"]["message"], r.text


def test_a_long_chat_history_413_names_the_flag_that_raises_it(server, stream):
    """A chat request carries its whole history: past 64 KiB the 413 says which setting raises the limit."""
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(80)]
    body = {"model": stream, "messages": [*history, {"role": "user", "content": QUESTION}], "max_tokens": 4}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=HANG_GUARD)
    assert r.status_code == 413
    assert "livevlm serve --max-body-bytes" in r.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_a_413_not_a_500(server, stream):
    """A body sent without Content-Length (chunked) is counted as it streams in: a frame over the limit was a
    500 with a traceback in the log, a JSON body a 400 'error parsing the body'."""
    def chunked(data: bytes):
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    frame = httpx.post(f"{server.url}/v1/streams/{stream}/frames?pts=50", content=chunked(b"\xff" * (5 << 20)),
                       headers={"content-type": "image/jpeg"}, timeout=HANG_GUARD)  # fmt: skip
    assert frame.status_code == 413, frame.text
    assert "--max-frame-bytes" in frame.json()["error"]["message"]
    body = json.dumps({"question": "x" * 70_000}).encode()
    ask = httpx.post(f"{server.url}/v1/streams/{stream}/ask", content=chunked(body),
                     headers={"content-type": "application/json"}, timeout=HANG_GUARD)  # fmt: skip
    assert ask.status_code == 413, ask.text
    assert "over the limit of 65536 bytes (raise it with livevlm serve --max-body-bytes" in ask.text


def test_openai_model_lookup_and_unknown_routes_are_explained(server, stream):
    """`client.models.retrieve(id)` was a bare 404 'Not Found', as was any route the server does not have."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve(stream).id == stream
    with pytest.raises(NotFoundError, match="no stream 'nope'"):
        client.models.retrieve("nope")
    with pytest.raises(NotFoundError, match="no route POST /v1/completions: the routes are listed at /docs"):
        client.completions.create(model=stream, prompt="x")
    wrong = httpx.get(f"{server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert "/v1/chat/completions takes POST" in wrong.json()["error"]["message"]


def test_openai_features_it_cannot_honour_are_refused(server, stream):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(UnprocessableEntityError, match="tools / function calling are not supported"):
        client.chat.completions.create(model=stream, messages=messages, tools=[tool])
    with pytest.raises(UnprocessableEntityError, match="logprobs are not supported"):
        client.chat.completions.create(model=stream, messages=messages, logprobs=True)
    plain = client.chat.completions.create(model=stream, messages=messages, tools=[tool], tool_choice="none",
                                           logprobs=False, max_tokens=4)  # fmt: skip
    assert plain.choices[0].message.content


def test_an_image_pasted_into_a_chat_message_is_explained(server, stream):
    """A base64 image is bigger than a chat body may be: the 413 says why images do not belong there."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    picture = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(Exception) as caught:
        client.chat.completions.create(model=stream, messages=[{"role": "user", "content": content}])
    assert getattr(caught.value, "status_code", None) == 413
    assert "push frames to the stream" in str(caught.value)


def test_frames_without_pts_after_frames_with_pts_are_refused_not_lost(server, stream):
    url = server.url
    ack = httpx.post(f"{url}/v1/streams/{stream}/frames?pts=1000", content=jpeg(5),
                     headers={"content-type": "image/jpeg"})  # fmt: skip
    assert ack.status_code == 202
    untimed = httpx.post(f"{url}/v1/streams/{stream}/frames", content=jpeg(6), headers={"content-type": "image/jpeg"})
    assert untimed.status_code == 422, untimed.text  # was: 202, then dropped by the session as out of order
    assert "send a pts with every frame, or with none" in untimed.json()["error"]["message"]
    wait_until(lambda: status(url, stream)["status"]["frames_processed"] == 3, "the timed frame")
    assert status(url, stream)["status"]["frames_rejected"] == 0

    fresh = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]  # never any pts: arrival times
    for i in range(3):
        r = httpx.post(f"{url}/v1/streams/{fresh}/frames", content=jpeg(i), headers={"content-type": "image/jpeg"})
        assert r.status_code == 202, r.text
    wait_until(lambda: status(url, fresh)["status"]["frames_processed"] == 3, "three untimed frames")
    assert status(url, fresh)["status"]["frames_rejected"] == 0
    httpx.delete(f"{url}/v1/streams/{fresh}")


def test_multipart_frame_upload_is_explained(server, stream):
    r = httpx.post(f"{server.url}/v1/streams/{stream}/frames", files={"file": ("f.jpg", jpeg(1), "image/jpeg")})
    assert r.status_code == 422
    assert "not a multipart/form-data upload" in r.json()["error"]["message"]


def test_websocket_metadata_of_the_wrong_type_keeps_the_socket(server, stream):
    with connect(server.url.replace("http://", "ws://") + f"/v1/streams/{stream}/ws") as ws:
        for meta in ({"format": 5}, {"format": ["jpeg"]}):
            ws.send(json.dumps({**meta, "pts": 10}))
            ws.send(jpeg(1))
            reply = json.loads(ws.recv(timeout=HANG_GUARD))  # was: the handler crashed, the socket dropped
            assert reply["type"] == "error" and reply["status"] == 422 and "format must be" in reply["message"]
        ws.send(json.dumps({"pts": 10, "format": "jpeg"}))
        ws.send(jpeg(1))
        assert json.loads(ws.recv(timeout=HANG_GUARD))["type"] == "ack"


def test_an_unbounded_deadline_is_a_typed_error_and_a_huge_one_works(server, stream):
    """deadline_s Infinity was a 500 (an OverflowError in the session's lock wait), so was 1e300."""
    for deadline, code in (("Infinity", 422), ("1e300", 200)):
        body = f'{{"question": "{QUESTION}", "deadline_s": {deadline}, "max_tokens": 4, "stream": false}}'
        r = httpx.post(f"{server.url}/v1/streams/{stream}/ask", content=body,
                       headers={"content-type": "application/json"}, timeout=HANG_GUARD)  # fmt: skip
        assert r.status_code == code, r.text
    assert "deadline_s must be finite" in httpx.post(f"{server.url}/v1/streams/{stream}/ask", content=body.replace(
        "1e300", "Infinity"), headers={"content-type": "application/json"}).json()["error"]["message"]  # fmt: skip


@pytest.mark.parametrize("route", ["ask", "chat"])
def test_a_client_that_leaves_stops_its_unstreamed_answer(server, stream, route):
    """A non-streamed answer is cancelled when its client disconnects: nothing decodes for nobody."""
    url = server.url
    if route == "ask":
        path, body = f"/v1/streams/{stream}/ask", {"question": QUESTION, "max_tokens": LONG, "stream": False}
    else:
        path = "/v1/chat/completions"
        body = {"model": stream, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": LONG}
    data = json.dumps(body).encode()
    port = int(url.rsplit(":", 1)[1])
    before = status(url, stream)["stats"]["answer_tokens"]

    def running() -> int:
        return httpx.get(f"{url}/v1/health").json()["scheduler"]["answers_running"]

    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)  # fmt: skip
        wait_until(lambda: running() == 1, "the answer to start")
    wait_until(lambda: running() == 0, "the answer to stop")
    decoded = status(url, stream)["stats"]["answer_tokens"] - before
    assert decoded < LONG // 2, f"{decoded} tokens decoded for a client that had left"


def test_a_short_api_key_from_the_environment_says_where_it_came_from(monkeypatch):
    monkeypatch.setenv("LIVEVLM_API_KEY", "abc")
    with pytest.raises(ConfigError, match="the one in LIVEVLM_API_KEY has 3"):
        ServeConfig()


def test_deleting_a_stream_mid_answer_says_so_in_the_servers_words(server):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    httpx.post(f"{url}/v1/streams/{sid}/frames", content=jpeg(0), headers={"content-type": "image/jpeg"})
    events, event = [], None
    with httpx.stream("POST", f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": LONG},
                      timeout=HANG_GUARD) as resp:  # fmt: skip
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
                if len(events) == 2:
                    assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204
    kind, error = events[-1]
    assert kind == "error" and error["status"] == 410
    assert "the stream was closed while answering" in error["message"] and "Session" not in error["message"]


def test_a_camera_password_is_not_listed(server, tmp_path):
    """GET /v1/streams echoes each stream's source: a URL's password must not be in it."""
    import shutil

    from http_files import serving_files

    from livevlm.assets import sample_video_path

    shutil.copy(sample_video_path(), tmp_path / "cam.mp4")

    with serving_files(tmp_path) as www:
        url = www.replace("http://", "http://viewer:s3cret-pw@") + "/cam.mp4"
        created = httpx.post(f"{server.url}/v1/streams", json={"source": url})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        wait_until(lambda: status(server.url, sid)["status"]["chunks"] >= 2, "two chunks")
        listed = httpx.get(f"{server.url}/v1/streams").text + httpx.get(f"{server.url}/v1/streams/{sid}").text
        assert "s3cret-pw" not in listed and "viewer:***@127.0.0.1" in listed
        assert httpx.delete(f"{server.url}/v1/streams/{sid}").status_code == 204
