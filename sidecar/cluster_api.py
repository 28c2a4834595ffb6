"""The sidecar's own cluster API under /api/cluster/: heartbeats, status, join and remove."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from signet_cluster.converter import structure, structure_json, unstructure
from signet_cluster.errors import (
    ClusterError,
    NotCoordinator,
    NotFound,
    PeerUnreachable,
    ProtocolMismatch,
    ValidationFailed,
)
from signet_cluster.protocol import (
    CoordinatorsUpdate,
    Heartbeat,
    JoinRequest,
    NodeInfo,
    PeerView,
)

from . import keys
from .coordinator import COORDINATOR, accept_heartbeat, coordinator_urls

log = structlog.get_logger("signet_cluster.cluster_api")
routes = web.RouteTableDef()


def require_coordinator(app: web.Application) -> None:
    if not app[keys.IDENTITY].coordinator:
        raise NotCoordinator(
            "this sidecar is not a coordinator; send this to one of its coordinators",
            details={"coordinators": app[keys.MEMBERSHIP].targets()},
        )


@routes.post("/api/cluster/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    message = structure_json(await request.read(), Heartbeat)
    reply = accept_heartbeat(request.app, message)
    return web.json_response(unstructure(reply))


@routes.get("/api/cluster/info")
async def info(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(unstructure(app[keys.IDENTITY].info(app[keys.WATCHER].snapshot)))


def self_view(app: web.Application) -> PeerView:
    identity = app[keys.IDENTITY]
    snapshot = app[keys.WATCHER].snapshot
    return PeerView(
        node_id=identity.node_id,
        url=identity.url,
        state="alive",
        joined=False,
        coordinator=identity.coordinator,
        protocol=identity.protocol.max,
        sidecar_version=identity.sidecar_version,
        instance_id=identity.instance_id,
        daemon=snapshot.info(),
        agents=snapshot.agents,
        last_seen_age_s=0.0,
    )


def local_status(app: web.Application) -> dict[str, Any]:
    """This sidecar's own answer: its registry on a coordinator, else its last copy."""
    identity = app[keys.IDENTITY]
    membership = app[keys.MEMBERSHIP]
    now = app[keys.CLOCK].monotonic()
    body: dict[str, Any] = {
        "node_id": identity.node_id,
        "url": identity.url,
        "coordinator": identity.coordinator,
        "sidecar_version": identity.sidecar_version,
        "protocol": unstructure(identity.protocol),
        "answered_by": identity.node_id,
        "local": {
            "daemon": unstructure(app[keys.WATCHER].snapshot.info()),
            "agents": unstructure(app[keys.WATCHER].snapshot.agents),
        },
        "coordinator_contacts": [
            membership.contact(u).summary(now)
            for u in membership.targets()
            if u != membership.self_url
        ],
    }
    if identity.coordinator:
        registry = app[keys.REGISTRY]
        routes_, collisions = registry.routing()
        body.update(
            view={
                "source": "registry",
                "registry_version": registry.version,
                "age_s": 0.0,
                "stale": False,
            },
            nodes=unstructure(registry.peers()),
            routes=unstructure(routes_),
            collisions=unstructure(collisions),
            coordinators=list(coordinator_urls(app)),
            ttl_s=registry.ttl,
        )
        return body
    view = membership.latest()
    if view is None:
        body.update(
            view={"source": "standalone", "registry_version": None, "age_s": None, "stale": False},
            nodes=[unstructure(self_view(app))],
            routes=[],
            collisions=[],
            coordinators=list(membership.targets()),
            ttl_s=app[keys.SETTINGS].ttl,
        )
        return body
    age = now - view.received_at
    nodes = list(view.peers)
    if not any(p.node_id == identity.node_id for p in nodes):
        nodes.append(self_view(app))
    body.update(
        view={
            "source": view.source,
            "registry_version": view.registry,
            "age_s": round(age, 3),
            "stale": age > app[keys.SETTINGS].ttl,
        },
        nodes=unstructure(sorted(nodes, key=lambda p: p.node_id)),
        routes=unstructure(view.routes),
        collisions=unstructure(view.collisions),
        coordinators=sorted(set(view.coordinators) | set(membership.targets())),
        ttl_s=app[keys.SETTINGS].ttl,
    )
    return body


@routes.get("/api/cluster/status")
async def status(request: web.Request) -> web.Response:
    """The cluster as the freshest source sees it: a coordinator answers from its registry;
    a member asks its coordinators and falls back to its own (possibly stale) copy."""
    app = request.app
    if app[keys.IDENTITY].coordinator or request.query.get("local") == "1":
        return web.json_response(local_status(app))
    membership = app[keys.MEMBERSHIP]
    errors: list[str] = []
    for url in membership.targets():
        try:
            response = await app[keys.PEERS].call(
                "GET", url, "/api/cluster/status", params={"local": "1"}
            )
        except PeerUnreachable as exc:
            errors.append(exc.message)
            continue
        if (
            response.status == 200
            and isinstance(response.body, dict)
            and response.body.get("coordinator")
        ):
            body = response.body
            body["asked"] = app[keys.IDENTITY].node_id
            return web.json_response(body)
        errors.append(f"{url} answered {response.status}")
    body = local_status(app)
    if errors:
        body["coordinator_errors"] = errors
    return web.json_response(body)


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if not address:
        raise ValidationFailed(["address: must be HOST:PORT or an http(s) URL"])
    if "://" not in address:
        address = "http://" + address
    scheme, rest = address.split("://", 1)
    if scheme not in ("http", "https") or not rest or "/" in rest or " " in rest:
        raise ValidationFailed(
            [f"address: {address!r} is not HOST:PORT or an http(s)://HOST:PORT URL"]
        )
    host_port = rest.rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit() or not 0 < int(host_port[1]) < 65536:
        raise ValidationFailed([f"address: {address!r} needs a port (HOST:PORT)"])
    return address


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValidationFailed([f"body is not valid JSON: {exc}"]) from None


@routes.post("/api/cluster/join")
async def join(request: web.Request) -> web.Response:
    """Probe a sidecar, record it as a joined member (persisted), tell it to heartbeat here."""
    app = request.app
    require_coordinator(app)
    body = structure(await _read_json(request), JoinRequest)
    url = normalise_address(body.address)
    peers = app[keys.PEERS]
    try:
        probe = await peers.call("GET", url, "/api/cluster/info")
    except PeerUnreachable as exc:
        raise PeerUnreachable(f"cannot reach a sidecar at {url}: {exc.message}") from None
    if probe.status != 200:
        raise PeerUnreachable(
            f"{url} answered /api/cluster/info with {probe.status}; is it a signet-cluster sidecar?"
        )
    try:
        info = structure(probe.body, NodeInfo)
    except ClusterError as exc:
        raise PeerUnreachable(f"{url} is not a compatible sidecar: {exc.message}") from None
    ours = app[keys.IDENTITY].protocol
    if ours.negotiate(info.protocol) is None:
        raise ProtocolMismatch(
            f"{url} speaks protocol {info.protocol.min}-{info.protocol.max}, "
            f"this coordinator {ours.min}-{ours.max}",
            details={"supported": unstructure(ours)},
        )
    if info.node_id == app[keys.IDENTITY].node_id:
        raise ValidationFailed([f"{url} is this coordinator itself"])
    registry = app[keys.REGISTRY]
    already = registry.record(info.node_id)
    already_joined = already is not None and already.joined
    await app[keys.STATE].add_joined(info.node_id, info.url)
    app[COORDINATOR].removed.discard(info.node_id)
    registry.mark_joined(info.node_id, info.url)
    told = await _tell(app, info.url, CoordinatorsUpdate(add=coordinator_urls(app)))
    log.info("peer_joined", node_id=info.node_id, url=info.url, already_joined=already_joined)
    return web.json_response(
        {
            "node_id": info.node_id,
            "url": info.url,
            "joined": True,
            "already_joined": already_joined,
            "told_to_heartbeat": told is None,
            "warning": told,
        }
    )


async def _tell(app: web.Application, url: str, update: CoordinatorsUpdate) -> str | None:
    """Best-effort coordinator update to a member; returns an error text or None."""
    try:
        response = await app[keys.PEERS].call(
            "POST", url, "/api/cluster/coordinators", unstructure(update)
        )
    except PeerUnreachable as exc:
        return exc.message
    return None if response.status == 200 else f"{url} answered {response.status}"


@routes.delete("/api/cluster/peers/{node}")
async def remove(request: web.Request) -> web.Response:
    """Forget a node (by node id, URL, HOST:PORT or a host with one node). Idempotent."""
    app = request.app
    require_coordinator(app)
    needle = request.match_info["node"]
    registry = app[keys.REGISTRY]
    if needle in (app[keys.IDENTITY].node_id, app[keys.IDENTITY].url):
        raise ValidationFailed(["a coordinator cannot remove itself"])
    record = registry.find(needle)
    if record is None:
        matches = registry.matches(needle)
        if len(matches) > 1:
            raise ValidationFailed(
                [
                    f"{needle!r} matches several nodes ({', '.join(matches)}); give the node id or HOST:PORT"
                ]
            )
        return web.json_response({"node": needle, "removed": False, "known": False})
    node_id, url = record.node_id, record.url
    await app[keys.STATE].remove_node(node_id)
    app[COORDINATOR].removed.add(node_id)
    registry.remove(node_id)
    told = await _tell(app, url, CoordinatorsUpdate(remove=coordinator_urls(app)))
    log.info("peer_removed", node_id=node_id, url=url)
    return web.json_response(
        {
            "node": needle,
            "node_id": node_id,
            "url": url,
            "removed": True,
            "known": True,
            "warning": told,
        }
    )


@routes.post("/api/cluster/coordinators")
async def update_coordinators(request: web.Request) -> web.Response:
    """Member side of join/remove: start or stop heartbeating to the given coordinators."""
    app = request.app
    update = structure(await _read_json(request), CoordinatorsUpdate)
    membership = app[keys.MEMBERSHIP]
    if update.add:
        await membership.add(update.add)
    if update.remove:
        await membership.remove(update.remove)
    log.info("coordinators_updated", add=list(update.add), remove=list(update.remove))
    return web.json_response({"coordinators": membership.targets()})


@routes.get("/api/cluster/peers/{node}")
async def peer(request: web.Request) -> web.Response:
    app = request.app
    require_coordinator(app)
    record = app[keys.REGISTRY].find(request.match_info["node"])
    if record is None:
        raise NotFound(f"no node {request.match_info['node']!r} in the registry")
    views = [p for p in app[keys.REGISTRY].peers() if p.node_id == record.node_id]
    return web.json_response(unstructure(views[0]))
