"""Frames pushed to a 'push' stream (POST /frames, the WebSocket): everything the session would refuse is refused
here, before the 202 or the ack (a time it cannot take, a first frame the model cannot take), not dropped after."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..errors import FrameError
from ..stream.frame import check_time
from ..stream.url import redact
from .config import ServeConfig
from .errors import InvalidRequestError, NotAPushStreamError
from .frames import decode_frame
from .streams import ServedStream, StreamManager


def push_stream(manager: StreamManager, sid: str) -> ServedStream:
    stream = manager.get(sid)
    if stream.push is None:
        raise NotAPushStreamError(
            f"stream {sid!r} reads {redact(stream.source)}; frames can only be sent to a 'push' stream"
        )
    return stream


def frame_meta(text: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except ValueError:
        raise InvalidRequestError(
            "a text message must be JSON frame metadata: {pts, format, width, height}"
        ) from None
    if not isinstance(meta, dict):
        raise InvalidRequestError("frame metadata must be a JSON object")
    return meta


async def push_frame(stream: ServedStream, data: bytes, fmt: str | None, width: Any, height: Any, pts: Any,
                      config: ServeConfig) -> None:  # fmt: skip
    if pts is not None:  # the session's own rule (an epoch time is refused), checked before the 202
        pts = check_time(pts)
    assert stream.push is not None
    now = time.monotonic()
    if pts is not None:
        _check_after_last(stream, pts, "")  # refused now, not dropped by the session after the 202
    limits = config.limits
    frame = await run_in_threadpool(decode_frame, data, fmt, width=width, height=height,
                                    max_bytes=limits.max_frame_bytes, max_pixels=limits.max_frame_pixels)  # fmt: skip
    stream.session.check_first_frame_size(*frame.shape[:2])  # an aspect the model refuses: 422, not a 202 then lost
    if pts is None:  # its arrival time since the stream's first frame: stamped here, so checked like a sent one
        pts = 0.0 if stream.push_t0 is None else now - stream.push_t0
        _check_after_last(stream, pts, " (a frame without pts is stamped with its arrival time since the stream's "
                                       "first frame): send a pts with every frame, or with none")
    stream.push_t0 = now if stream.push_t0 is None else stream.push_t0
    if not stream.push.push(frame, float(pts)):
        from ..errors import SessionClosedError

        raise SessionClosedError(f"stream {stream.id} was closed")
    stream.touch()


def _check_after_last(stream: ServedStream, pts: float, hint: str) -> None:
    assert stream.push is not None
    last = stream.push.stats.last_pts_seconds
    if last is not None and pts <= last:
        raise FrameError(f"pts {pts:g} is not after the stream's last frame ({last:g} s): a stream's times increase"
                         + hint)  # fmt: skip


def ack(stream: ServedStream) -> dict[str, Any]:
    assert stream.push is not None
    buffer = stream.push.buffer.stats
    return {"accepted": True, "frames_in": buffer.frames_in, "frames_dropped": buffer.frames_dropped}
