"""OpenAI-compatible routes: `GET /v1/models` lists the streams (`GET /v1/models/{id}`: one), `POST
/v1/chat/completions` answers over one.

The stream is named by the request's `model` (a stream id or name) or by the extra body field `stream_id`
(`extra_body={"stream_id": ...}` in the `openai` client). The last user message is the question; earlier turns
and system messages are not used (the stream's session has its own system prompt), decoding is greedy
(temperature/top_p are accepted and ignored); `stop` (up to 4 strings) ends the answer before the first of them;
`response_format` json_object / json_schema decodes under that schema (the constrain extra). What it cannot do
is refused (422), not ignored: several choices (`n`), tool calls, logprobs. Each response carries `livevlm`: the
stream, the pts range it was asked over and the chunks it saw.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .answers import AnswerJob, AnswerSummary, client_gone, gone_response, stop_strings, whole_answer
from .config import ServeConfig
from .errors import InvalidRequestError
from .http_errors import error_body
from .scheduler import ModelScheduler
from .security import RateLimiter, client_id
from .streams import StreamManager

_FINISH = {"stop": "stop", "length": "length", "deadline": "length"}


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_id: str | None = None
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    logprobs: bool | None = None


def check_unsupported(body: ChatBody) -> None:
    """Refuse (422) the OpenAI features the server cannot honour, rather than silently answering without them."""
    if body.n not in (None, 1):
        raise InvalidRequestError("n must be 1: answers are greedy")
    if (body.tools or body.functions) and body.tool_choice != "none":
        raise InvalidRequestError("tools / function calling are not supported: the answer is text about the stream")
    if body.logprobs:
        raise InvalidRequestError("logprobs are not supported")


def schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | str | None:
    """The JSON schema a `response_format` asks for: json_schema's schema, or any JSON for json_object."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format json_schema needs {'json_schema': {'schema': {...}}}")
        return schema
    raise InvalidRequestError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")


def question_of(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (string content or text parts); images are refused."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise InvalidRequestError("messages must contain a user message (the question)")
    content = users[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise InvalidRequestError(f"a text part's text must be a string, got {type(text).__name__}")
                texts.append(text)
            else:
                raise InvalidRequestError(
                    f"message part of type {kind!r} is not supported: send frames to the stream (WebSocket or "
                    "POST /v1/streams/{id}/frames) and ask in text"
                )
        return "\n".join(texts)
    raise InvalidRequestError("the user message's content must be a string or a list of text parts")


def add_openai_routes(app: FastAPI, manager: StreamManager, scheduler: ModelScheduler, limiter: RateLimiter,
                      config: ServeConfig) -> None:  # fmt: skip
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(s) for s in manager.list()]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict[str, Any]:
        return _model_card(manager.get(model))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatBody, request: Request) -> Response:
        check_unsupported(body)
        stop = stop_strings(body.stop)
        stream = manager.get(body.stream_id or body.model)
        question = question_of(body.messages)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        config.limits.check_question(question, max_tokens)
        limiter.check(client_id(request.scope, config.api_key is not None))
        stream.touch()
        context_tokens = (await run_in_threadpool(lambda: stream.session.stats)).kv_tokens  # off the loop
        schema = schema_of(body.response_format)
        job = AnswerJob(stream.session, scheduler, question, stop=stop, max_new_tokens=max_tokens, json_schema=schema)
        events = stream.answer_events(job.events())  # (a stream answering is not idle)
        kind, value = await anext(events)
        if kind == "error":
            await events.aclose()
            raise value
        meta = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": body.model}
        pending = value.pending_frames
        extra = {"stream_id": stream.id, "pts_range": list(value.pts_range), "chunks": value.chunks,
                 "pending_frames": pending}  # fmt: skip
        if not body.stream:
            summary = await whole_answer(events, lambda: client_gone(request))
            return JSONResponse(_completion(meta, summary, context_tokens, extra)) if summary else gone_response()
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        chunks = _chunks(events, meta, extra, context_tokens, include_usage)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )


def _model_card(stream: Any) -> dict[str, Any]:
    """A stream as an OpenAI model object (`GET /v1/models`, `client.models.retrieve(id)`)."""
    return {"id": stream.name or stream.id, "object": "model", "created": int(stream.created), "owned_by": "livevlm"}


def _usage(summary: AnswerSummary, context_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": context_tokens, "completion_tokens": summary.tokens,
            "total_tokens": context_tokens + summary.tokens}  # fmt: skip


def _completion(meta: dict, summary: AnswerSummary, context_tokens: int, extra: dict) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": summary.text},
              "finish_reason": _FINISH.get(summary.finish_reason, "stop"), "logprobs": None}  # fmt: skip
    return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(summary, context_tokens),
            "livevlm": extra}  # fmt: skip


def _chunk(meta: dict, delta: dict, finish: str | None = None, **more: Any) -> str:
    body = {**meta, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **more}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n"


async def _chunks(events: AsyncIterator[tuple[str, Any]], meta: dict, extra: dict, context_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    try:
        yield _chunk(meta, {"role": "assistant", "content": ""}, livevlm=extra)
        async for kind, value in events:
            if kind == "delta":
                yield _chunk(meta, {"content": value})
            elif kind == "done":
                yield _chunk(meta, {}, _FINISH.get(value.finish_reason, "stop"), livevlm=extra)
                if include_usage:
                    usage = {**meta, "object": "chat.completion.chunk", "choices": [],
                             "usage": _usage(value, context_tokens)}  # fmt: skip
                    yield f"data: {json.dumps(usage)}\n\n"
            elif kind == "error":
                yield f"data: {json.dumps(error_body(value)[1])}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()  # type: ignore[attr-defined]
