"""`Router`: streams placed over Ray replica actors, snapshotted periodically, restored when a replica dies.

    Router(config) ─► N × ray.remote(Replica) (one model each; one GPU each with replica_gpus=1)
    open()   ─► the live replica holding the fewest streams (then the lowest index); the stream stays there;
               frames come from push() or from a source the replica watches (file, URL, lavfi)
    push/ask ─► that replica; a call that finds it dead (RayActorError) ─► fail over, then the call is retried
    every snapshot_every_s (and snapshot()) ─► each replica saves its streams to snapshot_dir/<stream id>
    fail over ─► each stream of the dead replica ─► `open(id, snapshot, source)` on the least-loaded live
               replica ─► a `RestoreReport`: the memory is the snapshot's; a file source is read again from
               there, frames pushed (or shown live) since then are lost; a live replica in the dead one's
               pid space removes its spill dirs once its process is gone (`Replica.sweep_spill`)
    close()  ─► replicas shut down (sessions closed, spill files removed), everything written under
               snapshot_dir removed
The snapshot directory must be one every replica can read: local disk on one machine, shared storage
(NFS, a mounted bucket) across machines.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..errors import ConfigError, LivevlmError
from .replica import ReplicaActor, StreamNotHereError
from .router_config import NoReplicaError, RestoreReport, RouterConfig, _Stream, check_stream_id

__all__ = ["NoReplicaError", "RestoreReport", "Router", "RouterConfig"]

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class Router:
    """Places streams on replicas (affinity, fewest streams first), snapshots them, restores them on failure.
    Thread-safe; needs `ray.init()` first."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config = config or RouterConfig()
        self._own_dir = config.snapshot_dir is None
        self.snapshot_dir = Path(config.snapshot_dir or tempfile.mkdtemp(prefix="livevlm-snapshots-"))
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._actor = ray.remote(ReplicaActor).options(
            num_cpus=config.replica_cpus, num_gpus=config.replica_gpus, max_concurrency=config.replica_concurrency
        )
        self._lock = threading.RLock()
        self._replicas: list[Any] = [self._start() for _ in range(config.replicas)]
        self._alive = [True] * config.replicas
        short = self._shortfall()
        if short:
            logger.warning("%s: they start only if the cluster grows (waiting up to %g s)", short, config.call_timeout_s)
        try:  # a model that cannot load raises its typed error here (the same on every replica)
            self.info = [self._get(ref) for ref in [r.ready.remote() for r in self._replicas]]
        except GetTimeoutError:
            self._discard()
            raise NoReplicaError(
                f"the replicas did not start within {config.call_timeout_s:g} s" + (f": {short}" if short else "")
                + "; use fewer replicas (--replicas) or less per replica (--replica-cpus, --replica-gpus)"
            ) from None
        except BaseException:
            self._discard()
            raise
        self._streams: dict[str, _Stream] = {}
        self.restores: list[RestoreReport] = []
        self.snapshot_errors: list[str] = []  # saves that failed (a full disk...): the previous snapshot stays
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if config.snapshot_every_s:
            self._ticker = threading.Thread(target=self._snapshot_loop, name="livevlm-snapshots", daemon=True)
            self._ticker.start()

    # -- streams --------------------------------------------------------------------------------------
    def open(self, stream_id: str | None = None, source: Any = None) -> str:
        """A new stream on the least-loaded live replica; returns its id. `source` (a path the replicas can
        read, a URL, 'lavfi:...', a `FileSourceConfig`): the replica watches it; else frames come by `push`."""
        sid = "s-" + uuid.uuid4().hex[:8] if stream_id is None else check_stream_id(stream_id)
        with self._lock:
            if sid in self._streams:
                raise ConfigError(f"stream {sid!r} is open already")
            if (self.snapshot_dir / sid).exists():  # never restored from, never removed: not this router's
                raise ConfigError(f"{self.snapshot_dir / sid} exists (another run's snapshot, or files of yours): "
                                  "give the stream another id, or the router another snapshot_dir")  # fmt: skip
            stream = self._streams[sid] = _Stream(sid, self._least_loaded(), source)
        try:
            self._call(stream, "open", None, source)
        except BaseException:  # a source that cannot be opened: the id is free again and counts on no replica
            with self._lock:
                if self._streams.get(sid) is stream:
                    del self._streams[sid]
            raise
        return sid

    def push(self, stream_id: str, frames: np.ndarray | list[np.ndarray], pts: list[float | None] | None = None) -> int:
        """Push one frame (H, W, 3) or several to the stream's replica; returns the frames it has seen. A frame the
        session rejects is skipped and the rest are pushed, then `FrameError` names each rejected one."""
        batch = [frames] if isinstance(frames, np.ndarray) and frames.ndim != 4 else list(frames)  # (a bad one: its error)
        status = self._call(self._stream(stream_id), "push", batch, pts)
        return int(status["frames_seen"])

    def ask(self, stream_id: str, question: str, max_new_tokens: int | None = None, **ask: Any) -> dict[str, Any]:
        """The answer over the stream's memory: {"text", "tokens", "finish_reason", "pts_range", "chunks"}.
        `ask`: what `Session.ask` takes besides (within, choices, regex, ...)."""
        return self._call(self._stream(stream_id), "ask", question, max_new_tokens, **ask)

    def ask_stream(self, stream_id: str, question: str, **ask: Any) -> Iterator[Any]:
        """An answer as the replica decodes it (a Ray streaming generator): {"pts_range", "chunks"}, the text
        pieces, then {"tokens", "finish_reason"}. `ask`: what `Session.ask` takes (choices, regex, ...). A
        replica found dead before the first item is failed over and asked again; one that dies mid-answer
        fails the answer (`RayActorError`) after failing over, so the next question is answered elsewhere."""
        stream = self._stream(stream_id)
        for _ in range(self.config.replicas + 1):
            with self._lock:
                index, handle = stream.replica, self._replicas[stream.replica]
            items = handle.ask_stream.options(num_returns="streaming").remote(stream.id, question, **ask)
            try:
                head = self._get(next(items))
            except RayActorError:
                self._fail_over(index, handle)
                continue
            return self._rest(head, items, index, handle)
        raise NoReplicaError(f"stream {stream.id!r}: every replica died")

    def _rest(self, head: Any, items: Any, index: int, handle: Any) -> Iterator[Any]:
        yield head
        try:
            for ref in items:
                yield self._get(ref)
        except RayActorError:
            self._fail_over(index, handle)
            raise

    def call(self, stream_id: str, method: str, *args: Any) -> Any:
        """`Replica.<method>(stream_id, *args)` on the stream's replica (failed over if it died)."""
        return self._call(self._stream(stream_id), method, *args)

    def status(self, stream_id: str) -> dict[str, Any]:
        return {**self._call(self._stream(stream_id), "status"), "replica": self._stream(stream_id).replica}

    @property
    def replicas(self) -> list[Any]:
        """The replica actor handles, by index (a dead one stays in its place until replaced)."""
        with self._lock:
            return list(self._replicas)

    def placement(self) -> dict[str, int]:
        """Stream id -> the index of the replica holding it."""
        with self._lock:
            return {sid: s.replica for sid, s in self._streams.items()}

    def last_snapshot(self, stream_id: str) -> dict[str, Any] | None:
        """What the stream's last snapshot holds (frames_seen, last_pts_seconds, bytes, seconds); None before one."""
        with self._lock:
            snap = self._stream(stream_id).snapshot
            return dict(snap) if snap is not None else None

    def close_stream(self, stream_id: str) -> None:
        stream = self._stream(stream_id)
        self._call(stream, "close")
        with self._lock:
            self._streams.pop(stream_id, None)
        shutil.rmtree(self.snapshot_dir / stream_id, ignore_errors=True)

    # -- snapshots and failures -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Snapshot every stream now (each replica saves its own streams in turn); what each saved."""
        with self._lock:
            live = [i for i, ok in enumerate(self._alive) if ok]
            handles = {i: self._replicas[i] for i in live}
        pending = {i: h.snapshot_all.remote(str(self.snapshot_dir)) for i, h in handles.items()}
        saved: dict[str, dict[str, Any]] = {}
        for i, ref in pending.items():
            try:
                saved.update(ray.get(ref, timeout=self.config.call_timeout_s))
            except RayActorError:
                self._fail_over(i, handles[i])
        with self._lock:
            for sid, info in saved.items():
                if sid in self._streams and "error" not in info:
                    self._streams[sid].snapshot = info
                elif "error" in info:
                    self.snapshot_errors.append(f"{sid}: {info['error']}")
        return saved

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.config.snapshot_every_s):
            try:
                self.snapshot()
            except (RayTaskError, LivevlmError, OSError) as e:  # the next round tries again
                self.snapshot_errors.append(f"{type(e).__name__}: {e}")

    def _call(self, stream: _Stream, method: str, *args: Any, **kwargs: Any) -> Any:
        """`method(stream, *args, **kwargs)` on the stream's replica; a dead replica is failed over and the call
        retried."""
        for _ in range(self.config.replicas + 1):
            with self._lock:
                index = stream.replica
                handle = self._replicas[index]
            try:
                out = self._get(getattr(handle, method).remote(stream.id, *args, **kwargs))
            except RayActorError:
                self._fail_over(index, handle)
                continue
            if isinstance(out, dict) and "frames_seen" in out:
                with self._lock:
                    stream.frames_seen, stream.last_pts = int(out["frames_seen"]), out["last_pts_seconds"]
            return out
        raise NoReplicaError(f"stream {stream.id!r}: every replica died")

    def _get(self, ref: Any) -> Any:
        """`ray.get`, raising what the replica raised (a typed livevlm error stays typed across processes)."""
        try:
            return ray.get(ref, timeout=self.config.call_timeout_s)
        except RayTaskError as e:
            if isinstance(e.cause, Exception) and not isinstance(e.cause, RayActorError):
                raise e.cause from None
            raise

    def _fail_over(self, index: int, handle: Any) -> None:
        """Mark replica `index` (the actor `handle`) dead and restore each of its streams from its last
        snapshot elsewhere; a no-op when another call did so already."""
        with self._lock:
            if not self._alive[index] or self._replicas[index] is not handle:
                return
            self._alive[index], dead = False, self.info[index]
            if not any(self._alive):  # the last one died: start a fresh replica in its place
                self._replicas[index], self._alive[index] = self._start(), True
                self.info[index] = self._get(self._replicas[index].ready.remote())
            moved = [s for s in self._streams.values() if s.replica == index]
            for stream in moved:  # each on its own: one that cannot come back does not hold the others
                try:
                    self._restore(stream, index)
                except (LivevlmError, RayActorError, RayTaskError, GetTimeoutError) as e:
                    self._streams.pop(stream.id, None)
                    self.restores.append(RestoreReport(stream.id, index, -1, 0, stream.frames_seen,
                                                       (None, stream.last_pts), 0.0, None, f"closed: {e}"))  # fmt: skip
                    logger.error("stream %r could not be restored after replica %d died: %s", stream.id, index, e)
            self._sweep(dead)

    def _sweep(self, info: dict[str, Any]) -> None:
        """Have a live replica in a dead one's pid space (`info`: its `ready()`) remove its spill dirs once
        its process is gone (the kill is asynchronous: the restored sessions' disk tiers may come first)."""
        for i, handle in enumerate(self._replicas):
            if self._alive[i] and self.info[i].get("pid_space") == info.get("pid_space"):
                try:
                    ray.get(handle.sweep_spill.remote(info["pid"], info["pid_space"]), timeout=self.config.call_timeout_s)
                except (RayActorError, RayTaskError, GetTimeoutError):
                    continue  # the next disk tier made there removes them instead
                return

    def _restore(self, stream: _Stream, dead: int) -> None:
        """Open `stream` on the least-loaded live replica from its last snapshot (what the replica last saved, even
        if it died before saying so); a source that cannot be opened again: the memory alone, the error reported."""
        start, target, error = time.perf_counter(), self._least_loaded(), None
        saved = self.snapshot_dir / stream.id
        path = str(saved) if (saved / "manifest.json").exists() else None
        try:
            status = self._get(self._replicas[target].open.remote(stream.id, path, stream.source))
        except LivevlmError as e:
            if stream.source is None:
                raise
            error, stream.source = f"its source could not be opened again: {type(e).__name__}: {e}", None
            status = self._get(self._replicas[target].open.remote(stream.id, path, None))
        stream.replica = target
        kept, resumed = int(status["frames_seen"]), status["resumed_from"]
        lost = 0 if resumed is not None else max(0, stream.frames_seen - kept)
        self.restores.append(RestoreReport(
            stream.id, dead, stream.replica, kept, lost, (status["last_pts_seconds"], stream.last_pts),
            time.perf_counter() - start, resumed, error,
        ))  # fmt: skip
        stream.frames_seen, stream.last_pts = kept, status["last_pts_seconds"]

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop snapshotting, close every stream and replica, and remove what was written to snapshot_dir."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=self.config.call_timeout_s)
        with self._lock:
            for i, replica in enumerate(self._replicas):
                if self._alive[i]:
                    try:
                        ray.get(replica.shutdown.remote(), timeout=self.config.call_timeout_s)
                    except RayActorError:
                        pass
                    ray.kill(replica)
                    self._alive[i] = False
            streams, self._streams = list(self._streams), {}
        if self._own_dir:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            return
        for sid in streams:  # each stream's snapshot and what an interrupted save left beside it
            for path in [self.snapshot_dir / sid, *self.snapshot_dir.glob(f".{sid}.tmp-*")]:
                shutil.rmtree(path, ignore_errors=True)

    def _shortfall(self) -> str:
        """What the replicas ask for beyond the cluster's resources now ("" when they fit): an autoscaling
        cluster may still add the nodes, a fixed one never will."""
        c = self.config
        have = ray.cluster_resources()
        need = {"CPU": c.replicas * c.replica_cpus, "GPU": c.replicas * c.replica_gpus}
        if all(need[k] <= have.get(k, 0.0) + 1e-9 for k in need):
            return ""
        return (f"{c.replicas} replicas of {c.replica_cpus:g} CPU and {c.replica_gpus:g} GPU need {need['CPU']:g} CPU "
                f"and {need['GPU']:g} GPU; the cluster has {have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU")  # fmt: skip

    def _discard(self) -> None:
        """Undo a constructor that failed: its actors killed, its own snapshot dir removed."""
        for replica in self._replicas:
            ray.kill(replica)
        if self._own_dir:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Any:
        return self._actor.remote(self.config.model, self.config.session)

    def _stream(self, stream_id: str) -> _Stream:
        with self._lock:
            stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotHereError(f"no stream {stream_id!r} on this router")
        return stream

    def _least_loaded(self) -> int:
        with self._lock:
            live = [i for i, ok in enumerate(self._alive) if ok]
            if not live:
                raise NoReplicaError("every replica of the router is dead")
            load = {i: 0 for i in live}
            for s in self._streams.values():
                if s.replica in load:
                    load[s.replica] += 1
            return min(live, key=lambda i: (load[i], i))
