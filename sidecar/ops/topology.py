"""The live topology page: `GET /cluster` (HTML, JS and CSS shipped in sidecar/ops/static, no
CDN, so it works offline) polls `GET /api/cluster/topology`, a compact JSON view of the
freshest status: nodes with health, daemon flavor and version, coordinator role, heartbeat
age, and their agents by read policy; groups; collisions; problems; the spool."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from sidecar import keys
from sidecar.control.cluster_api import freshest_status
from signet_cluster.explain import cluster_problems

routes = web.RouteTableDef()

STATIC = {
    "cluster.js": "text/javascript",
    "cluster.css": "text/css",
}
# Polling faster than heartbeats shows nothing new; slower than a few seconds feels stale.
MIN_REFRESH_S, MAX_REFRESH_S = 0.25, 5.0
# The page is the sidecar's own code: it may only load what the sidecar itself serves.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"


def _asset(name: str) -> bytes:
    return resources.files("sidecar.ops.static").joinpath(name).read_bytes()


def topology(status: Mapping[str, Any], *, refresh_s: float, generated_at: float) -> dict[str, Any]:
    """The page's document, derived from a status document (any sidecar's)."""
    collisions = list(status.get("collisions", []))
    contested = {c["agent_id"]: c for c in collisions}
    groups: dict[str, list[dict[str, str]]] = {}
    nodes = []
    for node in status.get("nodes", []):
        agents = []
        for agent in node.get("agents", []):
            collision = contested.get(agent["id"])
            agents.append(
                {
                    "id": agent["id"],
                    "read_policy": agent.get("read_policy"),
                    "policy_group": agent.get("policy_group"),
                    "collision": collision is not None,
                    "owner": collision is None or collision["winner"] == node["node_id"],
                }
            )
            if agent.get("policy_group"):
                groups.setdefault(agent["policy_group"], []).append(
                    {"agent_id": agent["id"], "node_id": node["node_id"]}
                )
        daemon = node.get("daemon") or {}
        nodes.append(
            {
                "node_id": node["node_id"],
                "url": node.get("url"),
                "state": node.get("state"),
                "coordinator": bool(node.get("coordinator")),
                "joined": bool(node.get("joined")),
                "sidecar_version": node.get("sidecar_version"),
                "protocol": node.get("protocol"),
                "heartbeat_age_s": node.get("last_seen_age_s"),
                "spool": _node_spool(node.get("spool"), generated_at),
                "daemon": {
                    "flavor": daemon.get("flavor"),
                    "version": daemon.get("version"),
                    "healthy": bool(daemon.get("healthy")),
                    "error": daemon.get("error"),
                },
                "agents": agents,
            }
        )
    view = status.get("view") or {}
    return {
        "generated_at": generated_at,
        "refresh_s": refresh_s,
        "answered_by": status.get("answered_by"),
        "asked": status.get("asked") or status.get("node_id"),
        "source": view.get("source"),
        "table_age_s": view.get("age_s"),
        "stale": bool(view.get("stale")),
        "ttl_s": status.get("ttl_s"),
        "coordinators": list(status.get("coordinators", [])),
        "routes": len(status.get("routes", [])),
        "nodes": nodes,
        "groups": {name: members for name, members in sorted(groups.items())},
        "collisions": collisions,
        "problems": cluster_problems(status),
        "coordinator_errors": list(status.get("coordinator_errors", [])),
    }


def _node_spool(spool: Any, now: float) -> dict[str, Any] | None:
    """A node's spool as its heartbeat reports it, with the oldest entry's age."""
    if not isinstance(spool, Mapping):
        return None
    oldest = spool.get("oldest_at")
    return {
        "depth": spool.get("depth", 0),
        "bytes": spool.get("bytes", 0),
        "dead_letters": spool.get("dead_letters", 0),
        "oldest_age_s": round(max(0.0, now - oldest), 1) if oldest else None,
    }


@routes.get("/api/cluster/topology")
async def topology_json(request: web.Request) -> web.Response:
    app = request.app
    status = await freshest_status(app)
    interval = app[keys.SETTINGS].heartbeat_interval
    doc = topology(
        status,
        refresh_s=min(MAX_REFRESH_S, max(MIN_REFRESH_S, interval)),
        generated_at=app[keys.CLOCK].time(),
    )
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


@routes.get("/cluster")
async def page(_request: web.Request) -> web.Response:
    return web.Response(
        body=_asset("cluster.html"),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
    )


@routes.get("/cluster/static/{name}")
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(
        body=_asset(name),
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
