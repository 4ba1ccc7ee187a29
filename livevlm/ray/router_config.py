"""`RouterConfig` (validated at construction), a stream's record, and what a fail-over reports."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LivevlmError
from ..session_config import SessionConfig, as_session_config


class NoReplicaError(LivevlmError):
    """Every replica of the router is dead: nothing can hold a stream."""


@dataclass
class RouterConfig:
    """How many replicas, what each holds, and how often streams are snapshotted."""

    model: str | None = None
    """Checkpoint every replica loads (None: `session.model`, else the bundled default)."""
    session: SessionConfig = field(default_factory=SessionConfig)
    """The config of every stream's session."""
    replicas: int = 2
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    """GPUs per replica actor: 1 = one replica per GPU."""
    replica_concurrency: int = 16
    """Calls a replica serves at once on its thread pool (a status read need not wait for a long answer);
    model work still takes turns through the replica's scheduler."""
    snapshot_dir: str | None = None
    """Where streams are snapshotted (shared by the replicas); None = a temp dir of the router's own."""
    snapshot_every_s: float | None = 30.0
    """Seconds between snapshot rounds of every stream; None = only when `snapshot()` is called."""
    call_timeout_s: float = 600.0
    """Seconds a call to a replica may take (a replica's start, a question) before it is given up."""

    def __post_init__(self) -> None:
        self.session = as_session_config(self.session)
        _number("replicas", self.replicas, low=1, integer=True, none="a router needs at least one replica")
        _number("replica_concurrency", self.replica_concurrency, low=1, integer=True)
        _number("replica_cpus", self.replica_cpus, low=0)
        _number("replica_gpus", self.replica_gpus, low=0)
        _number("call_timeout_s", self.call_timeout_s, low=0, strict=True)
        if self.snapshot_every_s is not None:
            _number("snapshot_every_s", self.snapshot_every_s, low=0, strict=True, none="None: only on snapshot()")
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            raise ConfigError(f"RouterConfig.model must be a checkpoint path or hub id, got {type(self.model).__name__}")
        if self.snapshot_dir is not None:
            if not isinstance(self.snapshot_dir, (str, os.PathLike)) or not str(self.snapshot_dir):
                raise ConfigError(f"RouterConfig.snapshot_dir must be a directory path, got {self.snapshot_dir!r}")
            if Path(self.snapshot_dir).exists() and not Path(self.snapshot_dir).is_dir():
                raise ConfigError(f"RouterConfig.snapshot_dir {self.snapshot_dir} is a file, not a directory")


@dataclass(frozen=True)
class RestoreReport:
    """A stream moved off a dead replica: what it came back with and what was lost."""

    stream: str
    dead_replica: int
    replica: int
    snapshot_frames: int
    """Frames the stream had seen at its last snapshot (0: it had none; it restarted empty)."""
    frames_lost: int
    """Frames seen after that snapshot (as last confirmed by the dead replica) that the restored memory lacks
    and nothing will bring back: 0 for a file source, which is read again from the snapshot on."""
    pts_lost: tuple[float | None, float | None]
    """Stream time of the last frame kept and of the last frame lost."""
    seconds: float
    resumed_from: float | None = None
    """A file source's stream time the restored replica reads it again from (None: pushed or live frames)."""
    error: str | None = None
    """Why the restore fell short: the source could not be opened again (the memory came back, the watch did
    not), or the stream could not be restored at all (it was closed)."""


def _number(name: str, value: object, *, low: float, integer: bool = False, strict: bool = False,
            none: str = "") -> None:
    """`ConfigError` unless `value` is a finite number (an int with `integer`) >= `low` (> with `strict`)."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)  # type: ignore[arg-type]
    if not ok or value < low or (strict and value == low):  # type: ignore[operator]
        what = "an int" if integer else "a number"
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"RouterConfig.{name} must be {what} {bound}{f' ({none})' if none else ''}, got {value!r}")


_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_stream_id(stream_id: object) -> str:
    """A stream id is also its snapshot's directory name under snapshot_dir: letters, digits, '.', '_', '-' (no
    path separator, not starting with a dot), at most 128 characters; else `ConfigError`."""
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise ConfigError(f"a stream id is 1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-' "
                          f"(it names the stream's snapshot directory), got {stream_id!r}")  # fmt: skip
    return stream_id


@dataclass
class _Stream:
    id: str
    replica: int
    source: Any = None
    frames_seen: int = 0
    last_pts: float | None = None
    snapshot: dict[str, Any] | None = None  # what the replica reported when it saved the last snapshot
