"""`Replica`: one model and the streams placed on it -- what a Ray actor of the router runs.

    Router ─► replica.open(id [, snapshot])   a `Session` on the replica's model, fresh or `Session.load`ed
           ─► replica.push(id, frames)        session.push per frame, in order (nothing dropped)
           ─► replica.ask(id, question)       the whole answer's text
           ─► replica.snapshot_all(root)      each stream's `Session.save(root/<id>)`, atomic per stream
A plain class: the router wraps it with `ray.remote`; tests and single-process use may call it directly.
Calls are served one at a time (an actor's default), so its sessions take turns on the model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivevlmError
from ..models import load_model
from ..session import Session
from ..session_config import SessionConfig


class StreamNotHereError(LivevlmError, KeyError):
    """A stream id that this replica does not hold."""


class Replica:
    """The model, loaded once, and a `Session` per stream placed here."""

    def __init__(self, model: str | None, config: SessionConfig) -> None:
        self.config = config
        self.adapter = load_model(model or config.model, device=config.device, dtype=config.dtype)
        self.sessions: dict[str, Session] = {}

    def ready(self) -> dict[str, Any]:
        """Who this replica is once its model is loaded: pid and model identity."""
        return {"pid": os.getpid(), "fingerprint": self.adapter.fingerprint(), "family": self.adapter.family}

    def open(self, stream_id: str, snapshot: str | None = None) -> dict[str, Any]:
        """Start holding `stream_id`: a fresh session, or the one saved at `snapshot` (same model required)."""
        if stream_id in self.sessions:
            self.sessions.pop(stream_id).close()
        start = time.perf_counter()
        if snapshot is None:
            session = Session(self.adapter, self.config)
        else:
            session = Session.load(snapshot, self.adapter, device=self.config.device)
        self.sessions[stream_id] = session
        return {**self._status(stream_id), "seconds": time.perf_counter() - start}

    def push(self, stream_id: str, frames: list[np.ndarray], pts: list[float | None] | None = None) -> dict[str, Any]:
        """Push `frames` (RGB uint8 arrays) in order, with their stream times (None: the next 1/fps instant)."""
        session = self._session(stream_id)
        for frame, t in zip(frames, pts or [None] * len(frames)):
            session.push(frame, t)
        return self._status(stream_id)

    def ask(self, stream_id: str, question: str, max_new_tokens: int | None = None) -> dict[str, Any]:
        """The whole answer: text, tokens decoded, why it ended, the stream time range and chunks it was over."""
        answer = self._session(stream_id).ask(question, max_new_tokens=max_new_tokens)
        text = "".join(answer)
        return {"text": text, "tokens": answer.tokens, "finish_reason": answer.finish_reason,
                "pts_range": list(answer.pts_range), "chunks": answer.chunks}  # fmt: skip

    def status(self, stream_id: str) -> dict[str, Any]:
        return self._status(stream_id)

    def snapshot(self, stream_id: str, path: str) -> dict[str, Any]:
        """`Session.save(path)` of one stream; what it held then (frames, stream time) and what it cost."""
        status = self._status(stream_id)  # taken first: nothing is pushed between (one call at a time)
        info = self._session(stream_id).save(path)
        return {**status, "bytes": info.bytes, "seconds": info.seconds}

    def snapshot_all(self, root: str) -> dict[str, dict[str, Any]]:
        """A snapshot of every stream held here, each at `root/<stream id>`."""
        return {sid: self.snapshot(sid, str(Path(root) / sid)) for sid in list(self.sessions)}

    def close(self, stream_id: str) -> None:
        session = self.sessions.pop(stream_id, None)
        if session is not None:
            session.close()

    def shutdown(self) -> None:
        """Close every session (KV freed, spill files removed)."""
        for sid in list(self.sessions):
            self.close(sid)

    def _session(self, stream_id: str) -> Session:
        try:
            return self.sessions[stream_id]
        except KeyError:
            raise StreamNotHereError(f"stream {stream_id!r} is not on this replica") from None

    def _status(self, stream_id: str) -> dict[str, Any]:
        s = self._session(stream_id).stats
        return {"stream": stream_id, "frames_seen": s.frames_seen, "chunks": s.chunks,
                "last_pts_seconds": s.last_pts_seconds, "kv_bytes": s.kv_bytes}  # fmt: skip
