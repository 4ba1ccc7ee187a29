"""`livevlm serve` asked before a stream's first frame: a 409 naming the problem (not a 500, not an answer from
the question alone) on `/ask` and the chat endpoint; a file stream asked at once waits for its first frame; an
answer over one pushed frame says it read it. A real uvicorn server on 127.0.0.1 with the bundled model."""

from __future__ import annotations

import httpx2 as httpx
import numpy as np
import pytest
from openai import ConflictError, OpenAI
from serve_fixtures import start_server

from livevlm.assets import sample_video_path
from livevlm.serve import ServeConfig
from livevlm.stream import read_frames

HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure
QUESTION = "What colour is the circle?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    (media / "sample.mp4").write_bytes(sample_video_path().read_bytes())
    srv = start_server(ServeConfig(media_dir=str(media)))
    yield srv
    srv.stop()


def ask(url: str, sid: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, **body}, timeout=HANG_GUARD)


def test_asking_a_push_stream_before_its_first_frame_is_a_409(server):
    url = server.url
    sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
    for body in ({"stream": False}, {"stream": True}, {"stream": False, "choices": ["red", "blue"]}):
        r = ask(url, sid, **body)
        assert r.status_code == 409, r.text  # was: 200 with an answer over chunks=0
        message = r.json()["error"]["message"]
        assert "nothing has been ingested yet" in message and f"push:{sid}" in message, message
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(ConflictError, match="nothing has been ingested yet"):
        client.chat.completions.create(model=sid, messages=[{"role": "user", "content": QUESTION}])
    assert httpx.get(f"{url}/v1/streams/{sid}").json()["status"]["questions"] == 0

    frame = read_frames(str(sample_video_path()), fps=2.0, max_frames=1)[0].data
    pushed = httpx.post(f"{url}/v1/streams/{sid}/frames?pts=0&width={frame.shape[1]}&height={frame.shape[0]}",
                        content=np.ascontiguousarray(frame).tobytes(),
                        headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert pushed.status_code == 202, pushed.text
    answer = ask(url, sid, stream=False)  # at once: the frame on its way is waited for
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["text"].strip() and done["pts_range"] == [0.0, 0.0]
    assert (done["chunks"], done["pending_frames"]) == (0, 1)  # the one frame, read in the question's prefill
    reply = client.chat.completions.create(model=sid, messages=[{"role": "user", "content": QUESTION}])
    assert reply.model_extra["livevlm"]["pending_frames"] == 1
    assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204


def test_a_file_stream_asked_at_once_waits_for_its_first_frame(server):
    url = server.url
    r = httpx.post(f"{url}/v1/streams", json={"source": "sample.mp4"}, timeout=HANG_GUARD)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    answer = ask(url, sid, stream=False, max_tokens=4)  # no wait for chunks: asked as soon as it exists
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["pts_range"][0] == 0.0  # was: [null, null], an answer from the question alone
    assert done["chunks"] + done["pending_frames"] >= 1
    assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204
