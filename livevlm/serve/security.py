"""Auth, body-size limits and question rate limits, as plain ASGI middleware (HTTP and WebSocket alike).

Key: `Authorization: Bearer KEY` (or `X-API-Key: KEY`), `?key=KEY` (page loads, WebSockets: browsers cannot set their headers), or
the `livevlm_key` cookie that `GET /?key=KEY` sets (HttpOnly, SameSite=Strict), so the page's own calls carry it.
"""

from __future__ import annotations

import collections
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from .errors import RateLimitedError, ServeError

COOKIE = "livevlm_key"
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def request_key(scope: Scope) -> str | None:
    """The key a request presents (headers, then query, then cookie), or None."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "x-api-key" in headers:  # what many API clients send
        return headers["x-api-key"].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("key"):
        return query["key"][0]
    if "cookie" in headers:
        cookie = SimpleCookie()
        try:
            cookie.load(headers["cookie"])
        except Exception:  # noqa: BLE001 -- a malformed cookie header is just no key
            return None
        if COOKIE in cookie:
            return cookie[COOKIE].value
    return None


def client_id(scope: Scope) -> str:
    """Who a request counts against for rate limits: its key, else its address."""
    key = request_key(scope)
    if key:
        return "key:" + key
    client = scope.get("client") or ("?", 0)
    return f"addr:{client[0]}"


async def send_error(send: Callable[[dict], Awaitable[None]], status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    """An HTTP error response with the server's JSON error body."""
    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Refuses every HTTP request and WebSocket without the server's key (401)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.api_key is None or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        key = request_key(scope)
        if key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send 'Authorization: Bearer KEY' (or open the page as /?key=KEY)"
        if scope["type"] == "http":
            return await send_error(send, 401, message, [(b"www-authenticate", b"Bearer")])
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps({"error": {"status": 401, "message": message}}).encode()
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})


class BodyLimitMiddleware:
    """Refuses HTTP bodies over the limit with 413, by Content-Length or while they stream in."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], hint_for: Callable[[str], str] | None = None
                 ) -> None:  # fmt: skip
        self.app, self.limit_for, self.hint_for = app, limit_for, hint_for or (lambda path: "")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, hint = self.limit_for(scope["path"]), self.hint_for(scope["path"])
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length" and v.isdigit() and int(v) > limit:
                return await send_error(
                    send, 413, f"request body of {int(v)} bytes is over the limit of {limit}{hint}"
                )
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a body without Content-Length (chunked): a typed error, so the app's
                    # handler answers 413 (an untyped one was caught as a 500 before it got back here)
                    raise BodyTooLargeError(f"request body is over the limit of {limit} bytes{hint}")
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as e:  # read outside the app's own handlers
            if not started:
                await send_error(send, 413, str(e))


class BodyTooLargeError(ServeError):
    """A request body over the server's limit (HTTP 413)."""

    status = 413


class RateLimiter:
    """At most `per_minute` events per client in any 60 s window (0 = unlimited)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._events: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Count one event for `client`, or raise `RateLimitedError` (HTTP 429) when over the limit."""
        if not self.per_minute:
            return
        now = time.monotonic()
        with self._lock:
            events = self._events[client]
            while events and now - events[0] >= 60.0:
                events.popleft()
            if len(events) >= self.per_minute:
                retry = 60.0 - (now - events[0])
                raise RateLimitedError(
                    f"over {self.per_minute} questions per minute: retry in {retry:.0f} s", retry_after=retry
                )
            events.append(now)
