"""The daemon's memory API, served by the sidecar on the same paths with the same bodies.

`handle` is the whole path of one request, one step per line; each step lives in its own
module of this package. Reads of result lists are federated (sidecar.federation); everything
else is served by this node's daemon when the agent is local, `default` or unknown, relayed
to the owner's sidecar in one hop when it is remote, and refused with 503 naming the owner
when that node is down (a remember is spooled instead). A request that arrives from another
node (`x-signet-cluster-hop`) is never routed again: it is served here if this node owns the
agent, else refused (421).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar import keys
from sidecar.memory.forward import DaemonError
from sidecar.memory.proxy import EarlyResponse, daemon_failure
from sidecar.pipeline.agent import resolve
from sidecar.pipeline.decision import decide_action
from sidecar.pipeline.intake import read_request
from sidecar.pipeline.ownership import check_ownership
from sidecar.pipeline.serve import Outcome, serve
from signet_cluster.daemon.agent_resolution import RouteKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# (method, path, kind). GET routes also answer HEAD.
ROUTES: tuple[tuple[str, str, RouteKind], ...] = (
    ("POST", "/api/memory/recall", RouteKind.RECALL),
    ("GET", "/api/memory/search", RouteKind.SEARCH),
    ("GET", "/memory/search", RouteKind.LEGACY_SEARCH),
    ("POST", "/api/memory/remember", RouteKind.REMEMBER),
    ("POST", "/api/memory/save", RouteKind.REMEMBER),
    ("POST", "/api/hook/remember", RouteKind.HOOK_REMEMBER),
    ("POST", "/api/memory/modify", RouteKind.MODIFY),
    ("POST", "/api/memory/forget", RouteKind.FORGET),
    ("GET", "/api/memory/{id}", RouteKind.GET_BY_ID),
    ("PATCH", "/api/memory/{id}", RouteKind.PATCH_BY_ID),
    ("DELETE", "/api/memory/{id}", RouteKind.DELETE_BY_ID),
    ("POST", "/api/memory/{id}/recover", RouteKind.RECOVER),
    ("POST", "/api/hooks/{name}", RouteKind.HOOK),
    ("POST", "/api/knowledge/expand", RouteKind.EXPAND),
    ("POST", "/api/knowledge/expand/session", RouteKind.EXPAND),
)


async def handle(kind: RouteKind, request: web.Request) -> web.StreamResponse:
    """Serve one memory-API request and count it (`signet_cluster_proxied_requests`)."""
    started = time.perf_counter()
    outcome = Outcome()
    try:
        intake = await read_request(request)
        agent = resolve(request, kind, intake)
        decision = decide_action(request.app, kind, request.path, agent, intake)
        await check_ownership(request, kind, decision, intake)
        return await serve(request, kind, decision, intake, outcome)
    except EarlyResponse as early:
        outcome.outcome = "refused"
        return early.response
    except DaemonError as exc:
        outcome.outcome = "daemon_error"
        return daemon_failure(exc)
    finally:
        request.app[keys.METRICS].observe_proxied(
            kind.value, outcome.target, outcome.outcome, time.perf_counter() - started
        )


def add_memory_api(app: web.Application) -> None:
    """Register the memory routes (before the pass-through catch-all)."""
    for method, path, kind in ROUTES:
        handler: Handler = functools.partial(handle, kind)
        if method == "GET":
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)
