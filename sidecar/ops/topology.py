"""The live topology page: `GET /cluster` (HTML, JS and CSS shipped in sidecar/ops/static, no
CDN, so it works offline) polls `GET /api/cluster/topology`, a compact JSON view of the
freshest status: nodes with health, daemon flavor and version, coordinator role, heartbeat
age, and their agents by read policy; groups; collisions; problems; the spool."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
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
    # Where requests for each agent go now: an agent without a route to this node (its
    # owner is down, or another node owns it) is not reachable here.
    routed = {r["agent_id"]: r["node_id"] for r in status.get("routes", [])}
    standalone = (status.get("view") or {}).get("source") == "standalone"
    groups: dict[str, list[dict[str, str]]] = {}
    nodes = []
    for node in status.get("nodes", []):
        agents = []
        for agent in node.get("agents", []):
            collision = contested.get(agent["id"])
            routable = (
                agent["id"] == "default" or standalone or routed.get(agent["id"]) == node["node_id"]
            )
            agents.append(
                {
                    "id": agent["id"],
                    "read_policy": agent.get("read_policy"),
                    "policy_group": agent.get("policy_group"),
                    "collision": collision is not None,
                    "owner": collision is None or collision["winner"] == node["node_id"],
                    "routable": routable,
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
        "events": list(status.get("events") or [])[-20:][::-1],  # newest first
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
        "owners": list(spool.get("owners") or []),
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
async def page(request: web.Request) -> web.Response:
    """The page with its first paint rendered here (a plain screenshot or a browser without
    JavaScript shows the cluster); the script then keeps it current."""
    app = request.app
    doc = topology(
        await freshest_status(app), refresh_s=MAX_REFRESH_S, generated_at=app[keys.CLOCK].time()
    )
    return web.Response(
        body=render_page(_asset("cluster.html").decode(), doc).encode(),
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


# -- the first paint: the same markup cluster.js builds, as text ---------------------------
POLICIES = ("isolated", "shared", "group")


def _attrs(values: Mapping[str, Any]) -> str:
    return "".join(
        f' {name}="{escape(str(value))}"' for name, value in values.items() if value is not None
    )


def _tag(name: str, attributes: Mapping[str, Any], *children: str) -> str:
    return f"<{name}{_attrs(attributes)}>{''.join(children)}</{name}>"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.1f} s ago" if seconds < 60 else f"{round(seconds / 60)} min ago"


def spool_text(spool: Mapping[str, Any] | None) -> str:
    if not spool:
        return "none"
    dead = spool.get("dead_letters") or 0
    if not spool.get("depth"):
        return f"empty · {dead} dead letters" if dead else "empty"
    oldest = spool.get("oldest_age_s")
    age = ""
    if oldest is not None:
        age = f", oldest {oldest:.0f} s" if oldest < 60 else f", oldest {round(oldest / 60)} min"
    owners = spool.get("owners") or []
    target = f" for {', '.join(owners)}" if owners else ""
    return f"{spool['depth']} waiting{target}{age}" + (f" · {dead} dead letters" if dead else "")


def _chip(agent: Mapping[str, Any]) -> str:
    policy = (
        "default"
        if agent["id"] == "default"
        else (agent["read_policy"] if agent.get("read_policy") in POLICIES else "isolated")
    )
    group = agent.get("policy_group")
    label = f"{agent['id']} · {group}" if group else agent["id"]
    title = "default: node-local, shared" if policy == "default" else policy
    if group:
        title += f" (group {group})"
    if agent.get("collision"):
        title += (
            "; claimed twice, owner here"
            if agent.get("owner")
            else "; claimed twice, owned elsewhere"
        )
    if not agent.get("routable", True):
        title += "; not routable: no request reaches it here"
    classes = ["chip", f"policy-{policy}"]
    if agent.get("collision"):
        classes.append("collision")
    if not agent.get("owner", True):
        classes.append("not-owner")
    if not agent.get("routable", True):
        classes.append("unroutable")
    return _tag(
        "span",
        {
            "class": " ".join(classes),
            "title": title,
            "data-agent": agent["id"],
            "data-policy": policy,
            "data-group": group,
            "data-collision": "yes" if agent.get("collision") else None,
            "data-routable": None if agent.get("routable", True) else "no",
        },
        escape(label),
    )


def _node_card(node: Mapping[str, Any]) -> str:
    alive = node.get("state") == "alive"
    daemon = node.get("daemon") or {}
    health = "unknown" if not alive else ("healthy" if daemon.get("healthy") else "unhealthy")
    daemon_text = (
        f"{daemon.get('flavor') or '?'} {daemon.get('version') or '?'} · "
        + (health if alive else "unknown (node down)")
        + (f": {daemon['error']}" if alive and daemon.get("error") else "")
    )
    badges = [
        _tag(
            "span",
            {"class": f"badge state-{'alive' if alive else 'down'}"},
            escape(str(node.get("state"))),
        ),
        _tag(
            "span", {"class": "badge membership"}, "member" if node.get("joined") else "discovered"
        ),
    ]
    if node.get("coordinator"):
        badges.append(_tag("span", {"class": "badge coordinator"}, "coordinator"))
    rows = [
        ("url", None, node.get("url") or "?"),
        ("daemon", "daemon", daemon_text),
        ("heartbeat", "heartbeat", _age(node.get("heartbeat_age_s"))),
        (
            "sidecar",
            None,
            f"{node.get('sidecar_version') or '?'} · protocol {node.get('protocol') or '?'}",
        ),
        ("spool", "spool", spool_text(node.get("spool"))),
    ]
    details = "".join(
        _tag("dt", {}, name) + _tag("dd", {"data-field": field}, escape(str(text)))
        for name, field, text in rows
    )
    return _tag(
        "article",
        {
            "class": "node",
            "data-node-id": node["node_id"],
            "data-state": node.get("state"),
            "data-health": health,
        },
        _tag("h3", {}, escape(node["node_id"]), *badges),
        _tag("dl", {}, details),
        _tag("div", {"class": "agents"}, *(_chip(a) for a in node.get("agents", []))),
    )


def _items(texts: list[str]) -> str:
    if not texts:
        return _tag("li", {"class": "none"}, "none")
    return "".join(_tag("li", {}, escape(t)) for t in texts)


def event_text(event: Mapping[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.gmtime(float(event.get("at") or 0)))
    return f"{stamp} UTC  {event.get('text')}"


def render_page(template: str, doc: Mapping[str, Any]) -> str:
    """Fill the page's empty sections with the current state (escaped text only)."""
    problems = doc["problems"]
    degraded = bool(problems)
    fills = {
        "overall": "degraded" if degraded else "healthy",
        "overall_text": f"degraded ({len(problems)})" if degraded else "healthy",
        "meta": (
            f"{len(doc['nodes'])} nodes · {doc['routes']} routes · answered by "
            f"{doc['answered_by']} · TTL {doc['ttl_s']} s"
        ),
        "problems": _items([*problems, *(f"coordinator: {e}" for e in doc["coordinator_errors"])]),
        "nodes": "".join(_node_card(n) for n in doc["nodes"]),
        "events": _items([event_text(e) for e in doc.get("events", [])]),
        "groups": _items(
            [
                f"{name}: " + ", ".join(f"{m['agent_id']}@{m['node_id']}" for m in members)
                for name, members in doc["groups"].items()
            ]
        ),
        "collisions": _items(
            [
                f"{c['agent_id']}: claimed by {', '.join(c['claimants'])}; owner {c['winner']} ({c['rule']})"
                for c in doc["collisions"]
            ]
        ),
        "spool": _items(
            [
                f"{n['node_id']}: {spool_text(n['spool'])}"
                for n in doc["nodes"]
                if n.get("spool") and (n["spool"].get("depth") or n["spool"].get("dead_letters"))
            ]
        ),
    }
    page = template
    for name, value in fills.items():
        # Attribute values are escaped plain text; section bodies are markup built above.
        text = escape(value) if name in ("overall", "overall_text", "meta") else value
        page = page.replace("{{" + name + "}}", text)
    return page
