"""Bounds on what a client can make the sidecar hold: header sizes, idle and slow clients,
body sizes and body read time.

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
    return await handler(request)
