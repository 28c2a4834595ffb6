"""Request-scoped logging context and the one place errors become JSON responses."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from signet_cluster.errors import ClusterError

log = structlog.get_logger("signet_cluster.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "x-signet-request-id"


def json_error(status: int, message: str, code: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        return await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


@web.middleware
async def origin_form(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only a path may follow the method (`GET /health`): an absolute URL as the target
    (`GET http://x/health`, a proxy's form) names no resource here and cannot be relayed
    to the daemon as a path, so it is refused before anything else reads it."""
    if not request.raw_path.startswith("/") and request.raw_path != "*":
        return json_error(
            400,
            "the request target must be a path starting with '/' (origin-form), "
            "not an absolute URL",
            "bad_request_target",
        )
    return await handler(request)


def _is_cluster_path(path: str) -> bool:
    return path.startswith("/api/cluster/") or path in ("/livez", "/readyz")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClusterError as exc:
        if exc.status >= 500:
            log.warning("request_failed", path=request.path, error=exc.message, code=exc.code)
        return web.json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        # Our own routes answer JSON; everything else keeps aiohttp's (daemon-like) plain text.
        if _is_cluster_path(request.path) and exc.status >= 400:
            return json_error(exc.status, exc.reason, "http_" + str(exc.status))
        raise
    except Exception:
        log.exception("request_crashed", path=request.path, method=request.method)
        return json_error(500, "internal error in the sidecar (see its log)", "internal")
