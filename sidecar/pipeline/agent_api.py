"""The daemon's agent API (`/api/agents*`) at any sidecar, speaking for the whole cluster.

- `GET /api/agents`: every node's agents in the daemon's shape and order, each row with
  `cluster: {node_id, state}` (`signet_cluster.daemon.cluster_roster`). Live nodes are asked
  in parallel for their daemon's own rows (a signed hop, within `peer_timeout`); a node that
  is down or does not answer is listed from the registry, and the answer says so (`cluster`
  block, `x-signet-cluster-missing`). `default` is this node's row only.
- `GET /api/agents/{name}`: answered by the owner (one hop, as memory routes are); the
  daemon's own `404 {"error": "Agent not found"}` when no node has it; a name two nodes claim
  carries `cluster.collision`.
- `POST /api/agents`: created on this node's daemon, unless another node already holds that
  name (refused with 409 `agent_exists_elsewhere`: an agent never gets a second owner).
- `DELETE /api/agents/{name}`: goes to the owner.

A hop (`x-signet-cluster-hop`) is answered from this node alone and never routed again.
Legacy daemons (before 0.76) have no agents API: their only agent, `default`, is listed from
the roster and creating an agent there is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import keys
from sidecar.keys import PROXY
from sidecar.membership.peers import HOP_HEADER, ForwardFailed, RawResponse
from sidecar.memory.forward import SERVED_BY_HEADER, DaemonError, request_headers, to_response
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.proxy import (
    EarlyResponse,
    daemon_failure,
    forward_to_owner,
    misrouted,
    owner_unreachable,
    parse_object,
    read_body,
)
from sidecar.memory.routing import Target, current_view, decide, owner_peer, owns
from sidecar.security.auth import token_unverified
from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT
from signet_cluster.daemon.cluster_roster import (
    NodeRoster,
    cluster_rows,
    collision_block,
    daemon_rows,
    nodes_block,
    row_from_info,
    with_roster_agents,
)
from signet_cluster.protocol import AgentInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AGENTS_PATH = "/api/agents"
MISSING_HEADER = "x-signet-cluster-missing"
NOT_FOUND = {"error": "Agent not found"}
# In a hop's roster answer: the ids whose rows come from the sidecar's roster, not the daemon.
ROSTER_ONLY_KEY = "roster_only"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


def _legacy(app: web.Application) -> bool:
    return app[keys.WATCHER].snapshot.flavor == "ts-legacy"


def _self_state(app: web.Application) -> str:
    view = current_view(app)
    peer = view.peer(app[keys.IDENTITY].node_id) if view is not None else None
    return peer.state if peer is not None else "alive"


async def _daemon(request: web.Request, method: str, path_qs: str, body: bytes) -> RawResponse:
    """This node's daemon, with the client's headers (its token decides, as without us)."""
    headers = request_headers(request.headers)
    return await request.app[PROXY].daemon.send(method, path_qs, headers, body or None)


# -- the roster ---------------------------------------------------------------------------


async def _local_roster(request: web.Request) -> NodeRoster | RawResponse:
    """This node's rows, or the daemon's own refusal (a status other than 200)."""
    app = request.app
    node, state = app[keys.IDENTITY].node_id, _self_state(app)
    snapshot = app[keys.WATCHER].snapshot
    if _legacy(app):
        rows = tuple(row_from_info(a) for a in snapshot.agents)
        return NodeRoster(node_id=node, state=state, rows=rows, source="roster")
    try:
        raw = await _daemon(request, "GET", AGENTS_PATH, b"")
    except DaemonError as exc:
        rows = tuple(row_from_info(a) for a in snapshot.agents)
        return NodeRoster(
            node_id=node,
            state=state,
            rows=rows,
            source="roster",
            status="timeout" if exc.timed_out else "error",
            error=exc.message,
        )
    found = daemon_rows(_parse(raw.body)) if raw.status == 200 else None
    if found is None:
        return raw
    merged, roster_only = with_roster_agents(found, snapshot.agents)
    return NodeRoster(
        node_id=node, state=state, rows=tuple(merged), source="daemon", roster_only=roster_only
    )


def _parse(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


async def _peer_roster(
    request: web.Request, node_id: str, url: str, state: str, known: tuple[AgentInfo, ...]
) -> NodeRoster:
    """A live peer's own rows (a hop); its registry rows when it does not answer them."""
    app = request.app
    fallback = tuple(row_from_info(a) for a in known)
    try:
        raw = await app[keys.PEERS].forward(
            "GET",
            url,
            AGENTS_PATH,
            headers=request_headers(request.headers),
            body=b"",
            timeout=app[keys.SETTINGS].peer_timeout,
        )
    except ForwardFailed as exc:
        status = "timeout" if exc.timed_out else "error"
        return NodeRoster(
            node_id=node_id,
            state=state,
            rows=fallback,
            source="registry",
            status=status,
            error=exc.message,
        )
    answer = _parse(raw.body) if raw.status == 200 else None
    found = daemon_rows(answer)
    if found is None:
        text = raw.body[:200].decode("utf-8", "replace")
        return NodeRoster(
            node_id=node_id,
            state=state,
            rows=fallback,
            source="registry",
            status="error",
            error=f"GET {AGENTS_PATH} answered {raw.status}: {text}",
        )
    listed = answer.get(ROSTER_ONLY_KEY) if isinstance(answer, dict) else None
    roster_only = (
        frozenset(i for i in listed if isinstance(i, str))
        if isinstance(listed, list)
        else frozenset()
    )
    return NodeRoster(
        node_id=node_id, state=state, rows=tuple(found), source="daemon", roster_only=roster_only
    )


async def list_agents(request: web.Request) -> web.StreamResponse:
    app = request.app
    node = app[keys.IDENTITY].node_id
    local = await _local_roster(request)
    if isinstance(local, RawResponse):
        return to_response(local, node)  # the daemon refused (a token it does not accept)
    if HOP_HEADER in request.headers:
        if local.status != "ok":
            # The asking node lists us from the registry and reports why.
            return daemon_failure(DaemonError(local.error or "no answer", timed_out=False))
        ids = local.roster_only if local.source == "daemon" else {r["id"] for r in local.rows}
        answer = {"agents": list(local.rows), ROSTER_ONLY_KEY: sorted(ids)}
        return _json(answer, headers={SERVED_BY_HEADER: node})
    if local.source != "daemon" and token_unverified(request):
        return _unverified(app)
    view = current_view(app)
    rosters = [local]
    asks = []
    for peer in view.peers if view is not None else ():
        if peer.node_id == node:
            continue
        rows = tuple(row_from_info(a) for a in peer.agents)
        if not any(a.id != DEFAULT_AGENT for a in peer.agents):
            # Nothing to ask: its only agent is its own `default`, which is not listed here.
            rosters.append(
                NodeRoster(node_id=peer.node_id, state=peer.state, rows=rows, source="registry")
            )
            continue
        if peer.state != "alive":
            rosters.append(
                NodeRoster(
                    node_id=peer.node_id,
                    state=peer.state,
                    rows=rows,
                    source="registry",
                    status="down",
                    error=f"node is {peer.state} in the registry",
                )
            )
            continue
        asks.append(_peer_roster(request, peer.node_id, peer.url, peer.state, peer.agents))
    rosters.extend(await asyncio.gather(*asks))
    collisions = view.collisions if view is not None else ()
    missing = sum(1 for r in rosters if r.status != "ok")
    block = {"partial": missing > 0, "nodes": nodes_block(rosters)}
    body = {"agents": cluster_rows(node, rosters, collisions), "cluster": block}
    return _json(
        body, headers={SERVED_BY_HEADER: node, MISSING_HEADER: f"{missing}/{len(rosters)}"}
    )


def _unverified(app: web.Application) -> web.Response:
    """Only a daemon can judge a bearer token; when this node's daemon did not (it is down,
    or a legacy one answers no agent API), nothing of the cluster is handed out."""
    node = app[keys.IDENTITY].node_id
    return daemon_error(
        503,
        f"this request is authorised only by a bearer token, which node {node}'s daemon did "
        "not check (unavailable, or without an agent API); the roster is not served unchecked",
        code="token_unverified",
        node=node,
    )


# -- one agent ------------------------------------------------------------------------------


def _decorate(raw: RawResponse, target: Target, collision: dict[str, Any] | None) -> web.Response:
    """The owner's row with `cluster: {node_id, state[, collision]}`; other answers as sent."""
    row = _parse(raw.body) if raw.status == 200 else None
    if not isinstance(row, dict):
        return to_response(raw, target.node_id)
    given = row.get("cluster")
    block: dict[str, Any] = given if isinstance(given, dict) else {}
    block |= {"node_id": target.node_id, "state": target.owner_state}
    if collision is not None:
        block["collision"] = collision
    return _json(row | {"cluster": block}, headers={SERVED_BY_HEADER: target.node_id})


def _collision(app: web.Application, name: str) -> dict[str, Any] | None:
    view = current_view(app)
    for collision in view.collisions if view is not None else ():
        if collision.agent_id == name:
            return collision_block(collision)
    return None


async def _serve_here(request: web.Request, name: str, body: bytes) -> RawResponse:
    """This node's daemon for one agent (a legacy daemon has only `default`)."""
    app = request.app
    if _legacy(app):
        agent = app[keys.WATCHER].snapshot.agent(name)
        if request.method == "GET" and agent is not None:
            return _raw(200, row_from_info(agent))
        if request.method == "GET" or name != DEFAULT_AGENT:
            return _raw(404, NOT_FOUND)
        return _raw(400, {"error": "Cannot remove the default agent"})
    raw = await _daemon(request, request.method, request.raw_path, body)
    agent = app[keys.WATCHER].snapshot.agent(name)
    if request.method == "GET" and raw.status == 404 and agent is not None:
        # Routed here by the roster (agent.yaml, an agents/ folder) without a daemon row.
        return _raw(200, row_from_info(agent) | {"cluster": {"source": "roster"}})
    return raw


def _raw(status: int, body: object) -> RawResponse:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    return RawResponse(status, headers, json.dumps(body).encode())


async def _body(request: web.Request) -> bytes:
    """Raises EarlyResponse (413 too large, 408 too slow)."""
    settings = request.app[keys.SETTINGS]
    return await read_body(request, settings.max_body_bytes, settings.body_timeout)


async def one_agent(request: web.Request) -> web.StreamResponse:
    """`GET` and `DELETE /api/agents/{name}`, served by the agent's owner."""
    app = request.app
    name = request.match_info["name"]
    try:
        body = await _body(request)
    except EarlyResponse as early:
        return early.response
    hop = HOP_HEADER in request.headers
    if hop and not owns(app, name):
        return misrouted(app, name)
    target = decide(app, name)
    if target.kind == "unreachable":
        return owner_unreachable(app, target, None)
    if target.kind == "remote":
        try:
            raw = await forward_to_owner(request, target, body)
        except ForwardFailed as exc:
            return owner_unreachable(app, target, exc)
    else:
        if _legacy(app) and token_unverified(request):
            return _unverified(app)
        try:
            raw = await _serve_here(request, name, body)
        except DaemonError as exc:
            return daemon_failure(exc)
        if request.method == "DELETE" and raw.status == 200:
            await app[keys.WATCHER].refresh()  # the next heartbeat gives the name up
    if hop or request.method != "GET":
        return to_response(raw, target.node_id)
    return _decorate(raw, target, _collision(app, name))


async def create_agent(request: web.Request) -> web.StreamResponse:
    """`POST /api/agents` on this node's daemon, never for a name another node holds."""
    app = request.app
    try:
        body = await _body(request)
    except EarlyResponse as early:
        return early.response
    parsed = parse_object(body)
    name = parsed.get("name") if parsed is not None else None
    node = app[keys.IDENTITY].node_id
    if _legacy(app):
        return daemon_error(
            501,
            f"node {node}'s daemon (ts-legacy, before 0.76) has no agents: create the agent "
            "through the sidecar of a node whose daemon is 0.76 or later",
            code="agents_unsupported",
            node=node,
        )
    if isinstance(name, str) and name.strip() and name.strip() != DEFAULT_AGENT:
        refusal = _taken_elsewhere(app, name.strip())
        if refusal is not None:
            return refusal
    try:
        raw = await _daemon(request, "POST", request.raw_path, body)
    except DaemonError as exc:
        return daemon_failure(exc)
    if raw.status in (200, 201):
        await app[keys.WATCHER].refresh()  # claimed at the next heartbeat, not a minute later
    return to_response(raw, node)


def _taken_elsewhere(app: web.Application, name: str) -> web.Response | None:
    """409 when another node holds `name` (alive or not: a down owner keeps its agents)."""
    view = current_view(app)
    if view is None:
        return None
    node = app[keys.IDENTITY].node_id
    owner = owner_peer(view, name)
    if owner is not None and owner.node_id == node:
        return None  # ours already: the daemon answers the duplicate as it would alone
    holders = [p for p in view.peers if p.node_id != node and any(a.id == name for a in p.agents)]
    holder = owner or (holders[0] if holders else None)
    if holder is None:
        return None
    return daemon_error(
        409,
        f"agent {name!r} already exists on node {holder.node_id} ({holder.url}, "
        f"{holder.state}); an agent has one owner in the cluster, so it was not created "
        f"here: use it where it is, delete it there first, or pick another name",
        code="agent_exists_elsewhere",
        agent=name,
        owner={"node_id": holder.node_id, "url": holder.url, "state": holder.state},
    )


# (method, path, handler, scope as the README's route table names it, metrics route label).
ROUTES: tuple[tuple[str, str, Handler, str, str], ...] = (
    ("GET", AGENTS_PATH, list_agents, "cluster-wide", "agents_list"),
    ("POST", AGENTS_PATH, create_agent, "local", "agent_create"),
    ("GET", AGENTS_PATH + "/{name}", one_agent, "owner-routed", "agent_info"),
    ("DELETE", AGENTS_PATH + "/{name}", one_agent, "owner-routed", "agent_delete"),
)
# The sidecar's own refusals, by their `code`, as `signet_cluster_proxied_requests` outcomes.
_OUTCOMES = {
    "owner_unreachable": "unreachable",
    "misrouted": "misrouted",
    "daemon_unavailable": "daemon_error",
    "agent_exists_elsewhere": "refused",
    "agents_unsupported": "refused",
    "token_unverified": "refused",
    "body_too_large": "refused",
    "body_timeout": "refused",
}


def _outcome(response: web.StreamResponse) -> str:
    if response.status < 400 or not isinstance(response, web.Response):
        return "ok"
    answer = _parse(response.body) if isinstance(response.body, bytes) else None
    code = answer.get("code") if isinstance(answer, dict) else None
    return _OUTCOMES.get(code, "ok") if isinstance(code, str) else "ok"


def _counted(route: str, handler: Handler) -> Handler:
    """Count each request in `signet_cluster_proxied_requests` like a memory-API one."""

    async def counted(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        node = request.app[keys.IDENTITY].node_id
        served = response.headers.get(SERVED_BY_HEADER, node)
        request.app[keys.METRICS].observe_proxied(
            route,
            "local" if served == node else served,
            _outcome(response),
            time.perf_counter() - started,
        )
        return response

    return counted


def add_agent_api(app: web.Application) -> None:
    """Register the agent routes (before the pass-through catch-all)."""
    for method, path, handler, _scope, route in ROUTES:
        if method == "GET":
            app.router.add_get(path, _counted(route, handler))
        else:
            app.router.add_route(method, path, _counted(route, handler))
