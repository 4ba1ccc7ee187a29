"""Many streams over many replicas with Ray (the optional `ray` extra): placement, snapshots, fail-over.

    from livevlm.ray import Router, RouterConfig
    ray.init()
    with Router(RouterConfig(model=path, replicas=2, replica_gpus=1, snapshot_every_s=30)) as router:
        sid = router.open(); router.push(sid, frames); router.ask(sid, "What happened?")["text"]

`Replica` (replica.py) holds a model and a `Session` per stream; `Router` (router.py) places streams, snapshots
them to a shared directory and restores a dead replica's streams on another one (`Router.restores`);
`RayStreamManager` (serve.py) puts the HTTP server (`livevlm serve --ray`) in front of a router;
`ingest_many` (batch.py) fans a backlog of files out as one Ray task per segment and merges the answers in order.
"""

try:
    import ray as _ray  # noqa: F401
except ImportError as e:  # the extra is not installed
    raise ImportError("livevlm.ray needs Ray: pip install 'livevlm[ray]'") from e

from .batch import SegmentResult, ingest_many
from .replica import Replica, StreamNotHereError
from .router import NoReplicaError, RestoreReport, Router, RouterConfig
from .serve import RayStreamManager, RemoteSession

__all__ = [
    "NoReplicaError",
    "RayStreamManager",
    "RemoteSession",
    "Replica",
    "RestoreReport",
    "Router",
    "RouterConfig",
    "SegmentResult",
    "StreamNotHereError",
    "ingest_many",
]
