"""Operator actions on the cluster: join, remove, adopt and promote. Each decision is
persisted, applied and replicated to every coordinator (sidecar.membership.admin_sync)."""

from __future__ import annotations

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.bodies import read_json
from sidecar.control.cluster_api import did_you_mean
from sidecar.etcd.admin import NotWithEtcd, refuse_with_etcd, remove_node, set_adoption
from sidecar.etcd.backend import ETCD
from sidecar.membership.admin_sync import pull, record_decision
from sidecar.membership.coordinator import COORDINATOR, coordinator_urls, require_coordinator
from sidecar.membership.events import RECENT_EVENTS
from signet_cluster.admin import AdminState, Adoption, NodeDecision, ownership
from signet_cluster.converter import structure, unstructure
from signet_cluster.errors import (
    ClusterError,
    NotFound,
    PeerUnreachable,
    ProtocolMismatch,
    ValidationFailed,
)
from signet_cluster.protocol import (
    AdoptRequest,
    CoordinatorsUpdate,
    JoinRequest,
    NodeInfo,
    PromoteRequest,
)

log = structlog.get_logger("signet_cluster.admin")

routes = web.RouteTableDef()


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


async def tell(app: web.Application, url: str, update: CoordinatorsUpdate) -> str | None:
    """Best-effort coordinator update to a member; returns an error text or None."""
    try:
        response = await app[keys.PEERS].call(
            "POST", url, "/api/cluster/coordinators", unstructure(update)
        )
    except PeerUnreachable as exc:
        return exc.message
    if response.status == 200:
        return None
    body = response.body if isinstance(response.body, dict) else {}
    if body.get("code") == "wrong_node":
        other = (body.get("details") or {}).get("node_id")
        return f"{url} is now node {other!r}, not {update.node_id!r}; it was left alone"
    return f"{url} answered {response.status}"


@routes.post("/api/cluster/join")
async def join(request: web.Request) -> web.Response:
    """Probe a sidecar, record it as a joined member (persisted, replicated to every
    coordinator), and tell it to heartbeat to the coordinators."""
    app = request.app
    refuse_with_etcd(app, "join")
    require_coordinator(app)
    body = structure(await read_json(request), JoinRequest)
    url = normalise_address(body.address)
    try:
        probe = await app[keys.PEERS].call("GET", url, "/api/cluster/info")
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
    record = app[keys.REGISTRY].record(info.node_id)
    already_joined = record is not None and record.joined
    decision = NodeDecision(
        node_id=info.node_id, url=info.url, state="joined", at=app[keys.CLOCK].time()
    )
    await record_decision(app, AdminState(nodes=(decision,)))
    told = await tell(
        app, info.url, CoordinatorsUpdate(add=coordinator_urls(app), node_id=info.node_id)
    )
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


@routes.delete("/api/cluster/peers/{node}")
async def remove(request: web.Request) -> web.Response:
    """Forget a node (by node id, URL, HOST:PORT or a host with one node). Idempotent."""
    app = request.app
    if ETCD in app:  # membership lives in etcd: any sidecar can change it
        return web.json_response(await remove_node(app[ETCD], request.match_info["node"]))
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
        if needle in app[COORDINATOR].removed:  # removed before: nothing to do (idempotent)
            return web.json_response({"node": needle, "removed": False, "known": True})
        raise NotFound(
            f"no node {needle!r} in the cluster"
            + did_you_mean(needle, {*registry.addresses(), *registry.addresses().values()}),
            details={"node": needle},
        )
    node_id, url = record.node_id, record.url
    if record.state == "alive" and record.heartbeat is not None and record.heartbeat.coordinator:
        # It would keep its role and registry, without itself in it; a dead one may go.
        raise ValidationFailed(
            [
                f"node {node_id!r} is a live coordinator: demote it first "
                f"(`signet-cluster --sidecar {url} promote --demote`), then remove it"
            ]
        )
    decision = NodeDecision(node_id=node_id, url=url, state="removed", at=app[keys.CLOCK].time())
    await record_decision(app, AdminState(nodes=(decision,)))
    # Addressed to the node id: a different node now answering at that URL (restarted
    # under a new id, or a replacement host) refuses it and keeps heartbeating.
    told = await tell(app, url, CoordinatorsUpdate(remove=coordinator_urls(app), node_id=node_id))
    log.warning("peer_removed", node_id=node_id, url=url, told=told is None, error=told)
    app[RECENT_EVENTS].record("removed", f"{node_id} ({url}) removed by an operator", node_id)
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


@routes.post("/api/cluster/adopt")
async def adopt(request: web.Request) -> web.Response:
    """Make NODE the owner of a contested AGENT on every coordinator (or clear that). The
    answer says when the move changes the agent's effective read policy (the new owner's
    roster entry is the one that counts)."""
    return await _adopt(request, dry_run=False)


@routes.post("/api/cluster/adopt/preview")
async def adopt_preview(request: web.Request) -> web.Response:
    """The same answer as adopt, changing nothing (`adopt --dry-run`, and the confirmation).
    A path of its own: a sidecar without it answers 404 instead of adopting."""
    return await _adopt(request, dry_run=True)


async def _adopt(request: web.Request, *, dry_run: bool) -> web.Response:
    app = request.app
    body = structure(await read_json(request), AdoptRequest)
    if ETCD in app:
        if dry_run:
            raise NotWithEtcd("adopt preview: not available with the etcd backend")
        # With the etcd backend the adoption is a key in etcd, seen by every sidecar.
        return web.json_response(await set_adoption(app[ETCD], body.agent_id, body.node_id))
    require_coordinator(app)
    registry = app[keys.REGISTRY]
    peers = registry.peers()
    claimants = sorted(p.node_id for p in peers if any(a.id == body.agent_id for a in p.agents))
    if body.agent_id == "default":
        raise ValidationFailed(
            ["agent_id: `default` is local to every node and has no owner to adopt"]
        )
    adoptions = (await app[keys.STATE].admin_state()).active_adoptions()
    # Clearing an override stays possible after every node hosting the agent is gone.
    if not claimants and not (body.node_id is None and body.agent_id in adoptions):
        raise NotFound(
            f"no node hosts agent {body.agent_id!r}"
            + did_you_mean(body.agent_id, {a.id for p in peers for a in p.agents}),
            details={"agent_id": body.agent_id},
        )
    if body.node_id is not None and body.node_id not in claimants:
        raise ValidationFailed(
            [
                f"node {body.node_id!r} does not host agent {body.agent_id!r} "
                f"(nodes hosting it: {', '.join(claimants)})"
            ]
        )
    claims = registry.claims()
    before = ownership(peers, adoptions, claims, body.agent_id)
    planned = dict(adoptions)
    if body.node_id is None:
        planned.pop(body.agent_id, None)
    else:
        planned[body.agent_id] = body.node_id
    after = ownership(peers, planned, claims, body.agent_id)
    if not dry_run:
        decision = Adoption(agent_id=body.agent_id, node_id=body.node_id, at=app[keys.CLOCK].time())
        await record_decision(app, AdminState(adoptions=(decision,)))
    routes_, _collisions = registry.routing()
    routed = next((r.node_id for r in routes_ if r.agent_id == body.agent_id), None)
    policy_changed = before.policy_text() != after.policy_text()
    if not dry_run:
        log.info(
            "agent_adopted",
            agent_id=body.agent_id,
            node_id=body.node_id,
            owner=routed,
            policy_from=before.policy_text() if policy_changed else None,
            policy_to=after.policy_text() if policy_changed else None,
        )
    return web.json_response(
        {
            "agent_id": body.agent_id,
            "adopted_by": body.node_id,
            "owner": after.owner if dry_run else routed,
            "owner_before": before.owner,
            "claimants": claimants,
            "dry_run": dry_run,
            "policy_before": before.policy_text(),
            "policy": after.policy_text(),
            "policy_changed": policy_changed,
        }
    )


@routes.post("/api/cluster/promote")
async def promote(request: web.Request) -> web.Response:
    """Make this sidecar a coordinator (or stop being one) at run time; persisted."""
    app = request.app
    refuse_with_etcd(app, "promote")
    body = structure(await read_json(request), PromoteRequest)
    identity = app[keys.IDENTITY]
    was = identity.coordinator
    auth = app[keys.AUTH]
    if body.coordinator and auth.coordinator_keys_in_use and auth.coordinator_key is None:
        # Its heartbeats and replies could not prove the role: members would not follow it.
        raise ValidationFailed(
            [
                "this sidecar has no coordinator_key_file, so other nodes would not accept it "
                "as a coordinator; install the coordinator key here first"
            ]
        )
    await app[keys.STATE].set_meta("coordinator", "1" if body.coordinator else "0")
    identity.coordinator = body.coordinator
    if body.coordinator and not was:
        # Its registry is rebuilt from the heartbeats that now arrive: warming for a TTL.
        app[COORDINATOR].since = app[keys.CLOCK].monotonic()
        # Catch up on operator decisions before answering heartbeats as a coordinator.
        await pull(app)
    log.info("coordinator_role", coordinator=body.coordinator, was=was)
    return web.json_response(
        {"node_id": identity.node_id, "coordinator": body.coordinator, "was": was}
    )
