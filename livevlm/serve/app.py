"""The ASGI app of `livevlm serve`: streams as resources, frames in over WebSocket/POST, answers out as SSE.

Threading/async model:
  - the event loop (uvicorn) runs every route; nothing on it calls the model or blocks on a lock for long
    (source opening, frame decoding, session close run in the thread pool);
  - each stream has its own threads: a reader (decoding its source into a bounded keep-latest buffer; a
    push stream's buffer is filled by its WebSocket/POST route) and an ingestor (pushing buffered frames into
    its Session, each push inside a `ModelScheduler` turn);
  - each answer runs on its own thread inside the scheduler (answers go ahead of ingestion; see scheduler.py)
    and hands its pieces to the event loop through an asyncio queue;
  - a reaper task on the loop closes idle streams. Shutdown closes every stream (spill files removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FrameError, LivevlmError
from .answers import AnswerJob, AnswerSummary, client_gone, gone_response, stop_strings, whole_answer
from .config import ServeConfig
from .errors import InvalidRequestError, RateLimitedError
from .frames import encode_jpeg, sniff_format
from .http_errors import error_body
from .pushed import ack, frame_meta, push_frame, push_stream
from .scheduler import ModelScheduler
from .security import COOKIE, AuthMiddleware, BodyLimitMiddleware, BodyTooLargeError, RateLimiter, client_id
from .streams import StreamManager


class CreateStream(BaseModel):
    source: str = Field(description="'push', an rtsp/http(s) URL, 'lavfi:GRAPH', or a file under --media-dir")
    name: str | None = Field(None, description="an optional unique name (usable wherever an id is)")


class AskBody(BaseModel):
    question: str
    max_tokens: int | None = Field(None, ge=1, description="most answer tokens (default: the server's)")
    stream: bool = Field(True, description="stream Server-Sent Events (true) or answer with one JSON object")
    deadline_s: float | None = Field(None, gt=0, description="no token is decoded after this many seconds")
    stop: str | list[str] | None = Field(
        None, description="up to 4 strings: the answer ends before the first that appears (it is left out)"
    )
    choices: list[str] | None = Field(None, description="answer with the most likely of these (scored)")
    regex: str | None = Field(None, description="decode under this regular expression (the constrain extra)")
    json_schema: dict[str, Any] | None = Field(None, description="decode JSON matching this schema")
    within: tuple[float, float] | None = Field(
        None, description="[start, end] stream seconds: read only that part of the stream (kv full, retrieval, bilevel)"
    )


def build_app(config: ServeConfig, adapter: Any = None, manager: StreamManager | None = None) -> FastAPI:
    """The server's app, with the model loaded (or `adapter`, already loaded, shared); or, with `manager`,
    serving the streams that manager holds elsewhere (`livevlm.ray.RayStreamManager`: no model here)."""
    from ..models import load_model

    if manager is None:
        if adapter is None:
            s = config.session
            adapter = load_model(s.model, device=s.device, dtype=s.dtype)
        manager = StreamManager(adapter, config, ModelScheduler())
    scheduler = manager.scheduler
    limiter = RateLimiter(config.limits.questions_per_minute)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap(manager))
        try:
            yield
        finally:
            reaper.cancel()
            await run_in_threadpool(manager.close_all)

    app = FastAPI(title="livevlm", version=_version(), lifespan=lifespan,
                  description="Live video Q&A: streams, frames in, answers out (SSE and OpenAI-compatible).")  # fmt: skip
    app.state.manager, app.state.scheduler, app.state.limiter, app.state.config = (
        manager,
        scheduler,
        limiter,
        config,
    )
    _handlers(app)
    _routes(app, manager, scheduler, limiter, config)
    from .openai_api import add_openai_routes

    add_openai_routes(app, manager, scheduler, limiter, config)
    app.mount(
        "/static", StaticFiles(directory=str(resources.files("livevlm.serve") / "static")), name="static"
    )
    frames_limit = config.limits.max_frame_bytes + 1024
    limited = BodyLimitMiddleware(
        app, lambda path: frames_limit if path.endswith("/frames") else config.limits.max_body_bytes, _body_hint
    )
    return AuthMiddleware(limited, config.api_key)  # type: ignore[return-value]


_CHAT_BODY_HINT = ("; a chat message takes the question as text only (images are not read from it: push frames to "
                   "the stream, POST /v1/streams/{id}/frames or its WebSocket) and only the last user message is used")


def _body_hint(path: str) -> str:
    """What a 413 adds: the setting that raises the limit (and, for a chat, why images do not belong there)."""
    if path.endswith("/frames"):
        return " (a frame's limit: livevlm serve --max-frame-bytes, ServeLimits.max_frame_bytes)"
    hint = " (raise it with livevlm serve --max-body-bytes, ServeLimits.max_body_bytes)"
    return hint + (_CHAT_BODY_HINT if path == "/v1/chat/completions" else "")


def _version() -> str:
    from .. import __version__

    return __version__


async def _reap(manager: StreamManager) -> None:
    timeout = manager.config.limits.idle_timeout_s
    if not timeout:
        return
    while True:
        await asyncio.sleep(min(30.0, max(0.5, timeout / 4)))
        await run_in_threadpool(manager.reap_idle)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LivevlmError)
    async def typed(request: Request, exc: LivevlmError) -> JSONResponse:
        status, body = error_body(exc)
        headers = (
            {"Retry-After": str(math.ceil(exc.retry_after))} if isinstance(exc, RateLimitedError) else None
        )
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"status": 422, "message": _validation_message(request, exc)}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLargeError):  # a chunked JSON body: FastAPI made it "cannot parse"
            return await typed(request, exc.__cause__)
        message, where = str(exc.detail), f"{request.method} {request.url.path}"
        status = exc.status_code
        if status == 404 and message == "Not Found":  # no such route (a missing stream says so itself)
            message = f"no route {where}: the routes are listed at /docs"
        elif status == 400 and message == "There was an error parsing the body":  # FastAPI's, e.g. [[[...]]] 60 KB deep
            status, message = 422, ("the body could not be read as JSON (nested too deeply, or not JSON): send one "
                                    "JSON object")  # fmt: skip
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only (GET of /v1/streams)
            allowed = _methods_of(request) or (exc.headers or {}).get("Allow", "")
            headers = {**(exc.headers or {}), "Allow": allowed} if allowed else exc.headers
            message = f"{where} is not allowed" + (f"; {request.url.path} takes {allowed}" if allowed else "")
        return JSONResponse({"error": {"status": status, "message": message}}, status_code=status,
                            headers=headers)  # fmt: skip

    @app.exception_handler(Exception)
    async def untyped(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        return JSONResponse(body, status_code=status)


def _methods_of(request: Request) -> str:
    """Every method the routes of this request's path take ('GET, HEAD, POST'), for a 405's Allow header."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def summary_json(s: AnswerSummary) -> dict[str, Any]:
    return {"text": s.text, "pts_range": list(s.pts_range), "chunks": s.chunks, "pending_frames": s.pending_frames,
            "tokens": s.tokens, "finish_reason": s.finish_reason}  # fmt: skip


def _routes(app: FastAPI, manager: StreamManager, scheduler: ModelScheduler, limiter: RateLimiter,
            config: ServeConfig) -> None:  # fmt: skip
    page = (resources.files("livevlm.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        response = HTMLResponse(page)
        key = request.query_params.get("key")
        if config.api_key is not None and key:
            response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.session.model or "bundled default", "streams": len(manager.list()),
                "max_streams": config.limits.max_streams, "scheduler": _jsonable(scheduler.stats)}  # fmt: skip

    @app.get("/v1/streams")
    async def list_streams() -> dict[str, Any]:
        # describe() waits for each session's lock (held during a step): off the event loop
        streams = manager.list()
        described = await run_in_threadpool(lambda: [manager.describe(s, full=False) for s in streams])
        return {"streams": described}

    @app.post("/v1/streams", status_code=201)
    async def create_stream(body: CreateStream) -> dict[str, Any]:
        stream = await run_in_threadpool(manager.create, body.source, body.name)
        return manager.describe(stream)

    @app.get("/v1/streams/{sid}")
    async def get_stream(sid: str) -> dict[str, Any]:
        stream = manager.get(sid)
        stream.touch()
        return await run_in_threadpool(manager.describe, stream)

    @app.delete("/v1/streams/{sid}", status_code=204)
    async def delete_stream(sid: str) -> Response:
        await run_in_threadpool(manager.delete, sid)
        return Response(status_code=204)

    @app.get("/v1/streams/{sid}/frame.jpg", response_class=Response)
    async def latest_frame(sid: str) -> Response:
        stream = manager.get(sid)
        frame = stream.session.latest_frame
        if frame is None:
            return JSONResponse({"error": {"status": 404, "message": "no frame yet"}}, status_code=404)
        data = await run_in_threadpool(encode_jpeg, frame.data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.post("/v1/streams/{sid}/frames", status_code=202)
    async def post_frame(sid: str, request: Request, pts: float | None = None, width: int | None = None,
                         height: int | None = None) -> dict[str, Any]:  # fmt: skip
        stream = push_stream(manager, sid)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        fmt = {"image/jpeg": "jpeg", "image/png": "png", "application/octet-stream": "rgb"}.get(kind)
        data = await request.body()
        if kind.startswith("multipart/") and sniff_format(data) is None:
            raise FrameError("send the image itself as the request body (curl --data-binary @frame.jpg -H "
                             "'content-type: image/jpeg'), not a multipart/form-data upload (curl -F)")  # fmt: skip
        await push_frame(stream, data, fmt, width, height, pts, config)
        return ack(stream)

    @app.websocket("/v1/streams/{sid}/ws")
    async def push_ws(ws: WebSocket, sid: str) -> None:
        await ws.accept()
        try:
            stream = push_stream(manager, sid)
        except LivevlmError as e:
            status, body = error_body(e)
            await ws.send_json({"type": "error", **body["error"]})
            await ws.close(code=4000 + status)
            return
        meta: dict[str, Any] = {}
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    try:
                        meta = frame_meta(message["text"])
                    except InvalidRequestError as e:
                        await ws.send_json({"type": "error", "status": 422, "message": str(e)})
                    continue
                data, info, meta = message.get("bytes") or b"", meta, {}  # metadata applies to one frame
                try:
                    fmt, w, h, pts = (info.get(k) for k in ("format", "width", "height", "pts"))
                    await push_frame(stream, data, fmt, w, h, pts, config)
                except LivevlmError as e:
                    status, body = error_body(e)
                    await ws.send_json({"type": "error", **body["error"]})
                    if status == 410:
                        await ws.close(code=4410)
                        return
                    continue
                await ws.send_json({"type": "ack", **ack(stream)})
        except (WebSocketDisconnect, RuntimeError):  # the client left (a send after its close raises RuntimeError)
            return

    @app.post("/v1/streams/{sid}/ask", response_model=None)
    async def ask(sid: str, body: AskBody, request: Request) -> Response:
        stop = stop_strings(body.stop)
        if stop and body.choices:
            raise InvalidRequestError("stop cannot be combined with choices: the answer is one of the choices")
        stream = manager.get(sid)
        config.limits.check_question(body.question, body.max_tokens)
        limiter.check(client_id(request.scope, config.api_key is not None))
        stream.touch()
        job = AnswerJob(stream.session, scheduler, body.question, stop=stop, max_new_tokens=body.max_tokens,
                        deadline_s=body.deadline_s, choices=body.choices, regex=body.regex,
                        json_schema=body.json_schema, within=body.within)  # fmt: skip
        events = stream.answer_events(job.events())  # (a stream answering is not idle)
        kind, value = await anext(events)
        if kind == "error":
            await events.aclose()
            raise value
        if not body.stream:
            summary = await whole_answer(events, lambda: client_gone(request))
            return JSONResponse(summary_json(summary)) if summary else gone_response()
        return StreamingResponse(_sse_answer(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip


async def _sse_answer(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[str]:
    try:
        async for kind, value in events:
            if kind == "delta":
                yield sse("delta", {"text": value})
            elif kind == "done":
                yield sse("done", summary_json(value))
            elif kind == "error":
                yield sse("error", error_body(value)[1]["error"])
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _jsonable(value: Any) -> Any:
    from .jsonable import jsonable

    return jsonable(value)


def _validation_message(request: Request, exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line a client can act on (where, what; a body that is not JSON said so)."""
    parts = []
    for e in exc.errors():
        loc = e.get("loc", ())
        if e.get("type") == "json_invalid":
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            parts.append(f"the body is not valid JSON{at}: {(e.get('ctx') or {}).get('error', e.get('msg'))}")
        elif tuple(loc) == ("body",) and e.get("type") in ("dict_type", "model_attributes_type"):
            kind = request.headers.get("content-type") or "none"
            parts.append(f"the body must be a JSON object (sent as content-type: application/json; got {kind})")
        else:
            parts.append(f"{'.'.join(str(p) for p in loc[1:]) or 'body'}: {e.get('msg')}")
    return "; ".join(p if len(p) <= 300 else p[:297] + "..." for p in parts)
