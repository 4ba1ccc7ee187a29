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


def client_id(scope: Scope, keyed: bool) -> str:
    """Who a request counts against for rate limits: its key on a server with one (`keyed`: checked by
    `AuthMiddleware`), else its address (a made-up key must not buy a fresh allowance)."""
    key = request_key(scope) if keyed else None
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
    """Refuses every HTTP request and WebSocket without the server's key (401). A server without a key (it only
    listens on loopback) answers only requests addressed to a loopback name and not sent by another site's page
    (403): otherwise any web page its user opens could push frames or ask through the browser (a cross-site
    request carries an Origin), or read answers by pointing a name of its own at 127.0.0.1 (DNS rebinding: the
    Host header is the attacker's name)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self.api_key is None:
            refused = foreign_request(scope)
            if refused is None:
                return await self.app(scope, receive, send)
            return await _refuse(scope, receive, send, 403, refused)
        key = request_key(scope)
        if key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send 'Authorization: Bearer KEY' (or open the page as /?key=KEY)"
        await _refuse(scope, receive, send, 401, message)


def foreign_request(scope: Scope) -> str | None:
    """Why a keyless server refuses this request (a Host that is not a loopback name, an Origin other than the
    server itself), or None."""
    from .config import is_loopback

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host = headers.get("host", "")
    if host and not is_loopback(_hostname(host)):
        return (f"Host {host!r} is not this server's: a server without an API key answers requests to 127.0.0.1 "
                "or localhost only (set --api-key to serve it under another name)")  # fmt: skip
    origin = headers.get("origin")
    if origin is not None and origin.partition("://")[2] != host:
        return (f"requests from the page of {origin!r} are refused: a server without an API key takes requests "
                "from its own page and from programs only (set --api-key to allow other sites' pages)")  # fmt: skip
    return None


def _hostname(host: str) -> str:
    """The name in a Host header, without its port ('[::1]:8000' -> '::1')."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _refuse(scope: Scope, receive: Any, send: Any, status: int, message: str) -> None:
    """An HTTP error response, or a WebSocket handshake refused with it (a close where the server cannot
    answer the handshake with HTTP)."""
    if scope["type"] == "http":
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else None
        return await send_error(send, status, message, extra)
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"error": {"status": status, "message": message}}).encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        reason = "missing or wrong API key" if status == 401 else message[:120]
        await send({"type": "websocket.close", "code": 1008, "reason": reason})


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
