"""Test and benchmark hooks: injected latency/failures, a request log, and the
``/__devdaemon/*`` routes that control them (a prefix no Signet daemon uses)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .http import error, json_response, not_found_text, text_response
from .state import DaemonState, state_of

HOOK_PREFIX = "/__devdaemon/"
#: Paths that count as "memory routes" for fail=error|hang. /health and the status
#: routes stay up, so a test can tell "daemon slow/broken" from "daemon gone".
MEMORY_PREFIXES = (
    "/api/memory",
    "/api/memories",
    "/memory/",
    "/api/hook/",
    "/api/hooks/",
    "/api/knowledge",
)
_FAILURE_BODIES = {
    "/api/memory/recall": {"error": "Recall failed", "results": []},
    "/api/memory/remember": {"error": "Failed to save memory"},
}

log = logging.getLogger("signet_cluster.devdaemon")


class HangGate:
    """Holds requests while ``fail == "hang"``; opens when the mode changes or on shutdown."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.shutting_down = False

    def close(self) -> None:
        if self._open.is_set():
            self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


HANG_GATE_KEY = web.AppKey("signet_devdaemon_hang_gate", HangGate)


def _logged_headers(request: web.Request) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in request.headers.items()
        if name.lower().startswith("x-signet-") or name.lower() in ("authorization", "content-type")
    }


async def _record(state: DaemonState, request: web.Request) -> None:
    body: Any = None
    if request.can_read_body:
        # read() caches the bytes on the request, so the handler can read them again.
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": _logged_headers(request),
            "body": body,
        }
    )


def _is_memory_route(path: str) -> bool:
    return path.startswith(MEMORY_PREFIXES)


@web.middleware
async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(HOOK_PREFIX):
        return await handler(request)
    state = state_of(request)
    await _record(state, request)
    faults = state.faults
    if faults.latency_ms > 0 and path != "/health":
        await asyncio.sleep(faults.latency_ms / 1000)
    if _is_memory_route(path):
        if faults.fail == "hang":
            gate = request.app[HANG_GATE_KEY]
            await gate.wait()
            if gate.shutting_down:
                return error("shutting down", 503)
        if faults.fail == "error":
            return json_response(
                _FAILURE_BODIES.get(path, {"error": "Internal error (devdaemon fail=error)"}), 500
            )
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Framework answers as the daemons give them: plain-text 404 for unknown routes
    (Hono answers wrong methods the same way; axum says 405), plain-text 500 for bugs."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return not_found_text()
    except web.HTTPMethodNotAllowed:
        if state_of(request).config.is_rust:
            return text_response("", 405)
        return not_found_text()
    except web.HTTPException:
        raise
    except Exception:
        log.exception("devdaemon handler failed: %s %s", request.method, request.path)
        return text_response("Internal Server Error", 500)


# -- /__devdaemon routes -------------------------------------------------------------------


async def get_faults(request: web.Request) -> web.Response:
    return json_response(state_of(request).faults.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = json.loads(await request.text() or "{}")
    except ValueError:
        return error("body must be JSON", 400)
    if not isinstance(body, dict):
        return error("body must be a JSON object", 400)
    problem = state.faults.update(body)
    if problem is not None:
        return error(problem, 400)
    gate = request.app[HANG_GATE_KEY]
    if state.faults.fail == "hang":
        gate.close()
    else:
        gate.open()
    return json_response(state.faults.as_dict())


async def get_requests(request: web.Request) -> web.Response:
    return json_response({"requests": list(state_of(request).requests)})


async def clear_requests(request: web.Request) -> web.Response:
    state_of(request).requests.clear()
    return json_response({"cleared": True})


def add_hook_routes(app: web.Application) -> None:
    app.router.add_get(HOOK_PREFIX + "faults", get_faults)
    app.router.add_post(HOOK_PREFIX + "faults", set_faults)
    app.router.add_get(HOOK_PREFIX + "requests", get_requests)
    app.router.add_delete(HOOK_PREFIX + "requests", clear_requests)


async def release_hung_requests(app: web.Application) -> None:
    """on_shutdown: let hung requests finish (with 503) so shutdown stays prompt."""
    gate = app[HANG_GATE_KEY]
    gate.shutting_down = True
    gate.open()
