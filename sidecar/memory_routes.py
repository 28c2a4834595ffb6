"""The daemon's memory API, served by the sidecar on the same paths with the same bodies.

Each request's agent is resolved as the daemon would (`signet_cluster.agent_resolution`),
then: reads of result lists go through federation (`federation.py`); everything else is
served by this node's daemon when the agent is local, `default` or unknown, relayed to the
owner's sidecar in one hop when it is remote, and refused with 503 naming the owner when
that node is down. A request that arrives from another node (`x-signet-cluster-hop`) is
never routed again: it is served here if this node owns the agent, else refused (421).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from signet_cluster.agent_resolution import RouteKind, resolve_agent

from . import keys
from .auth import token_unverified
from .fanout_legs import tag_hits
from .federation import federated_read, federates, list_key
from .forward import DaemonError, to_response
from .handoff import is_replay, spool_write
from .peers import HOP_HEADER, ForwardFailed
from .proxy import (
    AGENT_ROUTED_HEADER,
    TAG_HEADER,
    EarlyResponse,
    daemon_failure,
    forward_to_owner,
    misrouted,
    owner_unreachable,
    parse_object,
    read_body,
    serve_local,
)
from .routing import Target, decide, owns

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
    ("POST", "/api/hooks/{name}", RouteKind.HOOK),
    ("POST", "/api/knowledge/expand", RouteKind.EXPAND),
    ("POST", "/api/knowledge/expand/session", RouteKind.EXPAND),
)


async def handle(kind: RouteKind, request: web.Request) -> web.StreamResponse:
    """Serve one memory-API request and count it (`signet_cluster_proxied_requests`)."""
    started = time.perf_counter()
    outcome = ["ok", "local"]  # [outcome, target] as decided below
    try:
        return await _dispatch(kind, request, outcome)
    finally:
        request.app[keys.METRICS].observe_proxied(
            kind.value, outcome[1], outcome[0], time.perf_counter() - started
        )


async def _dispatch(
    kind: RouteKind, request: web.Request, outcome: list[str]
) -> web.StreamResponse:
    app = request.app
    try:
        settings = app[keys.SETTINGS]
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        parsed = parse_object(body) if request.method != "GET" else None
        if HOP_HEADER in request.headers:
            return await _serve_hop(request, kind, body, parsed, outcome)
        agent = resolve_agent(
            kind, query=request.query, headers=request.headers, body=parsed
        ).agent_id
        target = decide(app, agent)
        if target.kind != "local":
            outcome[1] = target.node_id
        if federates(kind, request.path):
            return await federated_read(request, kind, target, body, parsed)
        if target.kind == "local":
            try:
                raw = await serve_local(request, kind, agent, body, parsed, explicit=False)
            except DaemonError as exc:
                if kind not in SPOOLABLE or parsed is None or token_unverified(request):
                    raise
                return await _spool(
                    outcome, request, agent, parsed, f"the local daemon: {exc.message}"
                )
            return to_response(raw, target.node_id)
        if target.kind == "unreachable":
            outcome[0] = "unreachable"
            if kind in SPOOLABLE and parsed is not None and not token_unverified(request):
                return await _spool(
                    outcome, request, agent, parsed, f"owner is {target.owner_state}", target
                )
            return owner_unreachable(app, target, None)
        try:
            raw = await forward_to_owner(request, target, body)
        except ForwardFailed as exc:
            outcome[0] = "unreachable"
            if kind in SPOOLABLE and parsed is not None and not token_unverified(request):
                # Safe even if the owner got it before the failure: the daemon dedupes the
                # replay by content hash (and by the idempotency key when the client sent one).
                return await _spool(outcome, request, agent, parsed, exc.message, target)
            return owner_unreachable(app, target, exc)
        return to_response(raw, target.node_id)
    except EarlyResponse as early:
        outcome[0] = "refused"
        return early.response
    except DaemonError as exc:
        outcome[0] = "daemon_error"
        return daemon_failure(exc)


async def _serve_hop(
    request: web.Request,
    kind: RouteKind,
    body: bytes,
    parsed: dict[str, object] | None,
    outcome: list[str],
) -> web.StreamResponse:
    """A request another node routed here: served by this daemon as the named agent, or
    refused; never routed or fanned out again."""
    app = request.app
    agent = (
        request.headers.get(AGENT_ROUTED_HEADER)
        or resolve_agent(kind, query=request.query, headers=request.headers, body=parsed).agent_id
    )
    if not owns(app, agent):
        outcome[0] = "misrouted"
        return misrouted(app, agent)
    try:
        raw = await serve_local(request, kind, agent, body, parsed, explicit=True)
    except DaemonError as exc:
        # The owner's daemon is restarting: keep the write here (the owner's own spool),
        # unless this is already a replay from a spool (then the sender keeps it).
        if kind not in SPOOLABLE or parsed is None or is_replay(request.headers):
            raise
        return await _spool(outcome, request, agent, parsed, f"the owner's daemon: {exc.message}")
    node = app[keys.IDENTITY].node_id
    tag = request.headers.get(TAG_HEADER) == "1" and federates(kind, request.path)
    if tag and raw.status == 200:
        try:
            answer = json.loads(raw.body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            await tag_hits(app, answer, list_key(kind))
            return web.Response(
                status=200,
                body=json.dumps(answer).encode(),
                content_type="application/json",
                headers={"x-signet-cluster-served-by": node},
            )
    return to_response(raw, node)


# Only new memories are kept for later: modify/forget/delete depend on the memory's state
# at the owner, so they get 503 while it is unreachable.
SPOOLABLE = frozenset({RouteKind.REMEMBER, RouteKind.HOOK_REMEMBER})


async def _spool(
    outcome: list[str],
    request: web.Request,
    agent: str,
    parsed: dict[str, object],
    why: str,
    target: Target | None = None,
) -> web.Response:
    """Hand a remember to the spool (owner: `target`, or this node when it owns the agent)."""
    app = request.app
    if target is None:
        owner = {
            "node_id": app[keys.IDENTITY].node_id,
            "url": app[keys.IDENTITY].url,
            "state": "daemon unavailable",
        }
    else:
        owner = {"node_id": target.node_id, "url": target.url, "state": target.owner_state}
    response = await spool_write(
        app,
        agent_id=agent,
        owner=owner,
        method=request.method,
        path_qs=request.raw_path,
        headers=request.headers,
        body=dict(parsed),
        why=why,
    )
    # 202 stored; else refused (a bound reached, or a write no daemon would take).
    outcome[0] = "spooled" if response.status == 202 else "refused"
    return response


def add_memory_api(app: web.Application) -> None:
    """Register the memory routes (before the pass-through catch-all)."""
    for method, path, kind in ROUTES:
        handler: Handler = functools.partial(handle, kind)
        if method == "GET":
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)
