"""`GET /api/cluster/resolve` and `GET /api/cluster/routes`: where agents live, as this
sidecar routes them right now (for runtimes that resolve once at session start, and for
`signet-cluster resolve` / `routes`)."""

from __future__ import annotations

import difflib
from typing import Any

from aiohttp import web

from sidecar import keys
from sidecar.membership.view import ClusterView
from sidecar.memory.routing import Target, current_view, decide
from signet_cluster.converter import unstructure
from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT
from signet_cluster.errors import ValidationFailed

routes = web.RouteTableDef()


def view_info(app: web.Application, view: ClusterView | None) -> dict[str, Any]:
    """How fresh the routing table behind an answer is."""
    if view is None:
        return {"source": "standalone", "registry_version": None, "age_s": None, "stale": False}
    age = max(0.0, app[keys.CLOCK].monotonic() - view.received_at)
    return {
        "source": "registry" if app[keys.IDENTITY].coordinator else view.source,
        "registry_version": view.registry,
        "age_s": round(age, 3),
        "stale": age > app[keys.SETTINGS].ttl,
    }


def describe(app: web.Application, target: Target, view: ClusterView | None) -> dict[str, Any]:
    peer = view.peer(target.node_id) if view is not None else None
    daemon = peer.daemon if peer is not None else app[keys.WATCHER].snapshot.info()
    return {
        "agent_id": target.agent_id,
        "route": target.kind,
        "reason": target.reason,
        "owner": {
            "node_id": target.node_id,
            "url": target.url,
            "state": target.owner_state,
            "daemon": unstructure(daemon),
        },
        "policy": {"read_policy": target.read_policy, "policy_group": target.policy_group},
    }


@routes.get("/api/cluster/resolve")
async def resolve(request: web.Request) -> web.Response:
    """Where AGENT lives: owner node, its sidecar URL, read policy, and the table's age."""
    agent = (request.query.get("agent_id") or request.query.get("agentId") or "").strip()
    if not agent:
        raise ValidationFailed(["agent_id: give the agent to resolve (?agent_id=NAME)"])
    app = request.app
    view = current_view(app)
    target = decide(app, agent, view)
    body = describe(app, target, view)
    # Unknown agents are served by the local daemon (as the daemon itself would), so the
    # answer stays 200 for runtimes; `known` and `suggestion` let the CLI flag a typo.
    names = known_agents(app, view)
    body.update(
        answered_by=app[keys.IDENTITY].node_id,
        view=view_info(app, view),
        known=target.reason != "unknown agent",
        suggestion=None
        if target.reason != "unknown agent"
        else next(iter(difflib.get_close_matches(agent, sorted(names), n=1, cutoff=0.6)), None),
    )
    return web.json_response(body)


def known_agents(app: web.Application, view: ClusterView | None) -> set[str]:
    agents = {a.id for a in app[keys.WATCHER].snapshot.agents}
    if view is not None:
        agents.update(a.id for p in view.peers for a in p.agents)
    return agents


@routes.get("/api/cluster/routes")
async def list_routes(request: web.Request) -> web.Response:
    """Every agent this sidecar knows of and where it sends its requests."""
    app = request.app
    view = current_view(app)
    agents = known_agents(app, view)
    agents.discard(DEFAULT_AGENT)
    entries = [describe(app, decide(app, agent, view), view) for agent in sorted(agents)]
    return web.json_response(
        {
            "node_id": app[keys.IDENTITY].node_id,
            "view": view_info(app, view),
            "routes": entries,
            "collisions": unstructure(view.collisions) if view is not None else [],
        }
    )
