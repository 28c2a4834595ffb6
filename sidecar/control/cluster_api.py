"""The sidecar's own cluster API under /api/cluster/: heartbeats, status, join and remove."""

from __future__ import annotations

import difflib
from typing import Any

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.bodies import read_json
from sidecar.etcd.backend import ETCD
from sidecar.federation.health import peer_health
from sidecar.keys import current_summary
from sidecar.membership.coordinator import (
    accept_heartbeat,
    coordinator_urls,
    encode_reply,
    registry_tag,
    require_coordinator,
)
from sidecar.membership.events import RECENT_EVENTS
from sidecar.membership.peers import HOP_HEADER
from sidecar.membership.refusals import REFUSALS
from sidecar.memory.handoff import SPOOL
from sidecar.security.auth import proves_coordinator, reply_signature, require_sender
from sidecar.security.limits import CONNECTIONS
from signet_cluster.converter import structure, structure_json, unstructure
from signet_cluster.errors import (
    ClusterError,
    NotFound,
    PeerUnreachable,
    WrongNode,
)
from signet_cluster.explain import cluster_problems
from signet_cluster.protocol import (
    CoordinatorsUpdate,
    Heartbeat,
    PeerView,
)

log = structlog.get_logger("signet_cluster.cluster_api")
routes = web.RouteTableDef()


def did_you_mean(needle: str, names: set[str]) -> str:
    """`; did you mean X?` for the closest known name, else nothing."""
    close = difflib.get_close_matches(needle, sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@routes.post("/api/cluster/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    received = request.app[keys.METRICS].heartbeats_received
    refusals = request.app[REFUSALS]
    message: Heartbeat | None = None
    try:
        message = structure_json(await request.read(), Heartbeat)
        # A node may only describe itself (and so only claim agents for itself).
        require_sender(request, message.node_id)
        reply = accept_heartbeat(
            request.app, message, coordinator_proven=proves_coordinator(request)
        )
    except ClusterError as exc:
        received.labels(outcome=exc.code).inc()
        # A removed node is refused once and stops: that is the removal working.
        if exc.code != "removed":
            sender = (
                f"{message.node_id} ({message.url})" if message is not None else str(request.remote)
            )
            if refusals.record(sender, exc.code, exc.message):
                log.warning("heartbeat_refused", sender=sender, code=exc.code, error=exc.message)
        raise
    if refusals.entries:
        refusals.forget_sender(f"{message.node_id} ({message.url})", message.node_id)
    received.labels(outcome="accepted").inc()
    accepts = request.headers.get("Accept-Encoding", "")
    body, encoding, digest = encode_reply(request.app, reply, gzip_ok="gzip" in accepts)
    response = web.Response(body=body, content_type="application/json")
    # The member takes routes only from a reply it can check came from a coordinator.
    response.headers.update(reply_signature(request, 200, digest))
    if encoding is not None:
        response.headers["Content-Encoding"] = encoding
    return response


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


def spool_status(app: web.Application) -> dict[str, Any] | None:
    summary = current_summary(app)
    if summary is None:
        return None
    body: dict[str, Any] = unstructure(summary)
    oldest = summary.oldest_at
    body["oldest_age_s"] = round(max(0.0, app[keys.CLOCK].time() - oldest), 1) if oldest else None
    spool = app.get(SPOOL)
    if spool is not None:
        # Why new writes get 503 (a full disk), and the last damaged file moved aside.
        body["disk_full"] = spool.disk_full
        body["damaged"] = spool.damage
    return body


def connections_status(app: web.Application) -> dict[str, Any] | None:
    guard = app.get(CONNECTIONS)
    if guard is None:
        return None
    return {**guard.describe(), "exhausted": guard.exhaustion()}


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
            "spool": spool_status(app),
            "connections": connections_status(app),
        },
        "coordinator_contacts": [
            membership.contact(u).summary(now)
            for u in [*membership.targets(), *membership.told_to_stop()]
            if u != membership.self_url
        ],
    }
    if ETCD in app:
        body["etcd"] = app[ETCD].summary()
    if identity.coordinator:
        registry = app[keys.REGISTRY]
        routes_, collisions = registry.routing()
        body.update(
            view={
                "source": "registry",
                # The same tag heartbeat replies, resolve and routes carry (one type: text).
                "registry_version": registry_tag(app),
                "age_s": 0.0,
                "stale": False,
            },
            nodes=unstructure(registry.peers()),
            routes=unstructure(routes_),
            collisions=unstructure(collisions),
            coordinators=list(coordinator_urls(app)),
            ttl_s=registry.ttl,
            refused_heartbeats=app[REFUSALS].summary(),
            events=app[RECENT_EVENTS].recent(),
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
            "failsafe": bool(membership.direct),
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
    # Breakers and budgets are this sidecar's own (each node fans out on its own).
    federation = {"as_seen_by": app[keys.IDENTITY].node_id, "nodes": peer_health(app)}
    if request.query.get("local") == "1":
        local = local_status(app)
        local["federation"] = federation
        return web.json_response(local)
    body = await freshest_status(app)
    body["federation"] = federation
    # What makes the cluster degraded, judged once here for the CLI, scripts and the page.
    body["problems"] = cluster_problems(body)
    return web.json_response(body)


async def freshest_status(app: web.Application) -> dict[str, Any]:
    """The status document (also behind the /cluster page): from the registry on a
    coordinator, else from the first coordinator that answers, else the local copy."""
    if app[keys.IDENTITY].coordinator:
        return local_status(app)
    membership = app[keys.MEMBERSHIP]
    errors: list[str] = []
    for url in membership.targets():
        if url == membership.self_url:
            continue  # configured as a coordinator, but not one now
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
            body: dict[str, Any] = response.body
            body["asked"] = app[keys.IDENTITY].node_id
            return body
        errors.append(f"{url} answered {response.status}")
    body = local_status(app)
    if errors:
        body["coordinator_errors"] = errors
    return body


@routes.post("/api/cluster/coordinators")
async def update_coordinators(request: web.Request) -> web.Response:
    """Member side of join/remove: start or stop heartbeating to the given coordinators.
    An update naming another node id is refused (409 wrong_node) and changes nothing: the
    coordinator meant the node that used to answer at this URL, not this one."""
    app = request.app
    update = structure(await read_json(request), CoordinatorsUpdate)
    node_id = app[keys.IDENTITY].node_id
    if update.node_id is not None and update.node_id != node_id:
        raise WrongNode(
            f"this sidecar is node {node_id!r}, not {update.node_id!r}; nothing changed",
            details={"node_id": node_id},
        )
    membership = app[keys.MEMBERSHIP]
    addressed = update.node_id is not None
    if update.add:
        await membership.add(update.add, rejoin=addressed)
    if update.remove:
        await membership.remove(update.remove)
        if addressed and not update.add:
            sender = request.headers.get(HOP_HEADER)
            stopped = ", ".join(update.remove)
            by = f"coordinator {sender}, heartbeats to {stopped} stopped" if sender else stopped
            if await membership.mark_removed(by):
                log.warning(
                    "node_removed",
                    node_id=node_id,
                    by=by,
                    hint="this node is out of the cluster; `signet-cluster join` adds it back",
                )
    if not (update.remove and addressed):
        log.info("coordinators_updated", add=list(update.add), remove=list(update.remove))
    return web.json_response({"coordinators": membership.targets(), "node_id": node_id})


@routes.get("/api/cluster/peers/{node}")
async def peer(request: web.Request) -> web.Response:
    app = request.app
    require_coordinator(app)
    registry = app[keys.REGISTRY]
    needle = request.match_info["node"]
    record = registry.find(needle)
    if record is None:
        names = {*registry.addresses(), *registry.addresses().values()}
        raise NotFound(
            f"no node {needle!r} in the registry{did_you_mean(needle, names)}",
            details={"node": needle, "matches": registry.matches(needle)},
        )
    views = [p for p in app[keys.REGISTRY].peers() if p.node_id == record.node_id]
    return web.json_response(unstructure(views[0]))


async def unknown_cluster_route(request: web.Request) -> web.Response:
    raise NotFound(f"no such cluster API route: {request.method} {request.path}")


def add_cluster_fallback(app: web.Application) -> None:
    """`/api/cluster/*` is our namespace: an unknown path there is our JSON 404, never
    passed through to the daemon. Registered after every cluster route, before the catch-all."""
    app.router.add_route("*", "/api/cluster/{tail:.*}", unknown_cluster_route)
