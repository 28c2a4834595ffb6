"""Bounds on what a client can make the sidecar hold: open connections, header sizes, idle
and slow clients, body sizes and body read time.

- Open connections: `max_connections` in all and `max_connections_per_source` from one
  address (`ConnectionGuard`, below); past them only probes and cluster calls are served.

- Request line and each header field: `max_header_bytes` (aiohttp answers 400 past it);
  at most 128 header fields.
- A connection that sends no complete request headers within `idle_timeout` is closed
  (aiohttp's keep-alive timer runs from the moment a connection opens): slow-loris bounded.
- Bodies the sidecar reads (its own API, signed requests, memory calls): `max_body_bytes`
  (aiohttp's `client_max_size`), received within `body_timeout`, else 413 / 408.
- Bodies passed through to the daemon unread (document uploads): `max_upload_bytes`, checked
  here on Content-Length; a streaming pass-through must also stop at `body_limit()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar import keys
from signet_cluster.security.signing import SIGNATURE_HEADER
from signet_cluster.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_HEADERS = 128


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's AppRunner / TestServer: the per-connection limits."""
    return {
        "keepalive_timeout": settings.idle_timeout,
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "max_headers": MAX_HEADERS,
    }


def reads_body(request: web.Request) -> bool:
    """Requests whose body the sidecar itself reads (so the small limit applies)."""
    return request.path.startswith("/api/cluster/") or SIGNATURE_HEADER in request.headers


def body_limit(settings: Settings, request: web.Request) -> int:
    return settings.max_body_bytes if reads_body(request) else settings.max_upload_bytes


def _too_large(limit: int) -> web.Response:
    return web.json_response(
        {
            "error": f"request body is larger than this sidecar accepts ({limit} bytes)",
            "code": "body_too_large",
        },
        status=413,
    )


@web.middleware
async def body_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    limit = body_limit(settings, request)
    length = request.content_length
    if length is not None and length > limit:
        return _too_large(limit)
    if request.body_exists and reads_body(request):
        # Read it now, with a deadline: a client trickling its body cannot hold a handler.
        # The bytes are cached on the request, so handlers read them again for free.
        try:
            async with asyncio.timeout(settings.body_timeout):
                await request.read()
        except TimeoutError:
            return web.json_response(
                {
                    "error": f"request body not received within {settings.body_timeout:g}s",
                    "code": "body_timeout",
                },
                status=408,
            )
        except web.HTTPRequestEntityTooLarge:
            return _too_large(settings.max_body_bytes)
        except ConnectionResetError:
            # The client hung up halfway through its body: nobody to answer, nothing to log.
            return body_incomplete()
    return await handler(request)


def body_incomplete() -> web.Response:
    return web.json_response(
        {"error": "the connection closed before the whole body arrived", "code": "body_incomplete"},
        status=400,
    )


# -- open connections ---------------------------------------------------------------------
# Every connection is a file descriptor. Past `max_connections` open (or
# `max_connections_per_source` from one address) a new connection is still accepted, but
# it is only served for liveness/readiness probes and signed cluster calls, one request;
# anything else gets 503 and the connection is closed. At most PRIORITY_HEADROOM such
# connections are open at once: past that, the oldest one that has not started a request
# is closed to make room, so a flood of idle connections cannot lock a probe out.
PRIORITY_HEADROOM = 64
# How long a connection admitted over the limit may take to send its one request.
OVER_LIMIT_GRACE = 2.0
# Seconds an accept() failure (out of file descriptors) keeps the node not ready.
ACCEPT_ERROR_MEMORY = 10.0
PRIORITY_PATHS = ("/livez", "/readyz")


class ConnectionGuard:
    """Counts open connections (in total and per source address) for one listener."""

    def __init__(self, max_total: int, max_per_source: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.open = 0
        self.by_source: dict[str, int] = {}
        # Connections admitted over a limit, oldest first (a dict keeps insertion order).
        self.over_limit: dict[asyncio.BaseTransport, None] = {}
        self.busy: set[asyncio.BaseTransport] = set()
        self._closing: set[asyncio.BaseTransport] = set()
        self.shed_requests = 0  # requests answered 503 on an over-limit connection
        self.dropped = 0  # connections closed unserved to make room
        self.accept_errors = 0
        self.last_accept_error: float | None = None
        self.accept_error_text = ""

    def watch(self, server: web.Server) -> None:
        """Count the connections of aiohttp's `server` (its protocol factory's hooks)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            transport = handler.transport
            lost(handler, exc)
            if transport is not None:
                self.closed(transport)

        # aiohttp's Server has no connection hooks; these two methods are what its
        # RequestHandler calls on every open and close.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def would_exceed(self, transport: asyncio.BaseTransport) -> bool:
        """Opening this connection now would put it over a limit."""
        source = _source(transport)
        return self.open >= self.max_total or self.by_source.get(source, 0) >= self.max_per_source

    def opened(self, transport: asyncio.BaseTransport) -> None:
        source = _source(transport)
        self.open += 1
        count = self.by_source.get(source, 0) + 1
        self.by_source[source] = count
        if self.open <= self.max_total and count <= self.max_per_source:
            return
        if len(self.over_limit) >= PRIORITY_HEADROOM:
            victim = next((t for t in self.over_limit if t not in self.busy), None)
            if victim is None:  # every one is being served: this one waits its turn
                self._close(transport)
                return
            del self.over_limit[victim]
            self._close(victim)
        self.over_limit[transport] = None
        asyncio.get_running_loop().call_later(OVER_LIMIT_GRACE, self._expire, transport)

    def _close(self, transport: asyncio.BaseTransport) -> None:
        self.dropped += 1
        self._closing.add(transport)
        transport.close()

    def closed(self, transport: asyncio.BaseTransport) -> None:
        source = _source(transport)
        self.open = max(0, self.open - 1)
        left = self.by_source.get(source, 1) - 1
        if left > 0:
            self.by_source[source] = left
        else:
            self.by_source.pop(source, None)
        self.over_limit.pop(transport, None)
        self.busy.discard(transport)
        self._closing.discard(transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if transport in self.over_limit and transport not in self.busy:
            del self.over_limit[transport]
            self._close(transport)

    def accept_failed(self, error: str) -> None:
        """asyncio could not accept a connection (out of file descriptors)."""
        self.accept_errors += 1
        self.last_accept_error = time.monotonic()
        self.accept_error_text = error

    def exhaustion(self) -> str | None:
        """Why this listener cannot take more clients now, or None."""
        now = time.monotonic()
        if self.last_accept_error is not None and now - self.last_accept_error < (
            ACCEPT_ERROR_MEMORY
        ):
            return (
                f"cannot accept connections: {self.accept_error_text} "
                f"({self.accept_errors} accept failures; {self.open} connections open)"
            )
        if self.open - len(self._closing) >= self.max_total:
            return (
                f"connection limit reached: {self.open} open (max_connections "
                f"{self.max_total}); new clients get 503"
            )
        return None

    def describe(self) -> dict[str, Any]:
        busiest = max(self.by_source.values(), default=0)
        return {
            "open": self.open,
            "max": self.max_total,
            "max_per_source": self.max_per_source,
            "busiest_source": busiest,
            "shed_requests": self.shed_requests,
            "closed_unserved": self.dropped,
            "accept_errors": self.accept_errors,
        }


CONNECTIONS = web.AppKey("connections", ConnectionGuard)


def _source(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return ""


def priority(request: web.Request) -> bool:
    """Requests served even on a connection over the limit: probes and cluster calls (a
    forged signature header buys one request, which authentication then refuses)."""
    return request.path in PRIORITY_PATHS or SIGNATURE_HEADER in request.headers


@web.middleware
async def connection_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app.get(CONNECTIONS)
    transport = request.transport
    if guard is None or transport is None or transport not in guard.over_limit:
        return await handler(request)
    if not priority(request):
        guard.shed_requests += 1
        refusal = web.json_response(
            {
                "error": "this sidecar has too many open connections "
                f"({guard.open}; max_connections {guard.max_total}, "
                f"max_connections_per_source {guard.max_per_source}); try again shortly",
                "code": "too_many_connections",
            },
            status=503,
            headers={"Retry-After": "5"},
        )
        refusal.force_close()
        return refusal
    guard.busy.add(transport)
    try:
        response = await handler(request)
    finally:
        guard.busy.discard(transport)
    # One request per connection over the limit: its descriptor is freed right after.
    response.force_close()
    return response
