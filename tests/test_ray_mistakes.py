"""livevlm.ray with the mistakes a user makes: a model the replicas cannot load, a source that cannot be opened,
a stream id that is not there. Typed errors across processes, and nothing left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from livevlm import SessionConfig
from livevlm.errors import ConfigError, ModelLoadError, SourceNotFoundError

ray = pytest.importorskip("ray")

from livevlm.ray import NoReplicaError, Router, RouterConfig, StreamNotHereError


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _snapshot_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("livevlm-snapshots-*"))


def test_a_model_the_replicas_cannot_load_is_a_typed_error_and_leaves_nothing(ray_cluster, tmp_path):
    """It was Ray's ActorDiedError carrying the replica's traceback as text (`livevlm serve --ray` printed ~160
    lines), and the router's temporary snapshot directory stayed behind."""
    before = _snapshot_dirs()
    config = RouterConfig(model=str(tmp_path / "no-such-checkpoint"), replicas=2, replica_cpus=0.5,
                          snapshot_every_s=None)  # fmt: skip
    with pytest.raises(ModelLoadError, match="no-such-checkpoint"):
        Router(config)
    assert _snapshot_dirs() - before == set()
    with pytest.raises(ConfigError, match="at least one replica"):
        Router(RouterConfig(replicas=0))


def test_a_stream_whose_source_cannot_be_opened_is_not_kept(ray_cluster, tiny_checkpoints, tmp_path):
    """A failed `open` kept the stream registered (its id taken, counted by placement) and its session alive on
    the replica; `livevlm serve --ray` leaked one per refused source URL."""
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], session=SessionConfig(max_new_tokens=2),
                          replicas=1, replica_cpus=0.5, snapshot_every_s=None)  # fmt: skip
    with Router(config) as router:
        with pytest.raises(SourceNotFoundError, match="missing.mp4"):
            router.open("cam", source=str(tmp_path / "missing.mp4"))
        assert router.placement() == {}
        with pytest.raises(StreamNotHereError):  # the replica holds no session for it either
            ray.get(router.replicas[0].status.remote("cam"))
        with pytest.raises(StreamNotHereError, match="no stream 'cam' on this router"):
            router.ask("cam", "What is it?")
        assert router.open("cam") == "cam"  # the id is free again
        with pytest.raises(ConfigError, match="open already"):
            router.open("cam")
        assert router.placement() == {"cam": 0}


def test_more_replicas_than_the_cluster_holds_is_named_not_a_silent_wait(ray_cluster, tiny_checkpoints, caplog):
    """3 replicas of 1 CPU on a 2-CPU cluster (or `--replica-gpus 1` on a machine without a GPU) waited forever
    in `ray.get`: `livevlm serve --ray` hung without a word."""
    before = _snapshot_dirs()
    config = RouterConfig(model=tiny_checkpoints["qwen2_vl"], replicas=3, replica_cpus=1.0, snapshot_every_s=None,
                          call_timeout_s=5.0)  # fmt: skip
    with caplog.at_level("WARNING", logger="livevlm.ray.router"), pytest.raises(NoReplicaError) as info:
        Router(config)
    shortfall = "3 replicas of 1 CPU and 0 GPU need 3 CPU and 0 GPU; the cluster has 2 CPU"
    assert shortfall in str(info.value) and "--replicas" in str(info.value)
    assert shortfall in caplog.text  # said at once, before the wait
    assert _snapshot_dirs() - before == set()
    with Router(RouterConfig(model=tiny_checkpoints["qwen2_vl"], replicas=2, snapshot_every_s=None)) as router:
        assert len(router.info) == 2  # the CPUs the failed start held are free again
