"""`replace OLD NEW`: a node came back under a new id (a new state dir, a rebuilt host).
NEW takes over OLD's membership (joined) and every adoption naming OLD, and OLD is
removed, as one decision replicated to every coordinator. Nothing is sent to OLD's URL:
NEW may be answering there."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.bodies import read_json
from sidecar.control.admin_api import tell
from sidecar.control.cluster_api import did_you_mean
from sidecar.etcd.admin import refuse_with_etcd
from sidecar.membership.admin_sync import record_decision
from sidecar.membership.coordinator import COORDINATOR, coordinator_urls, require_coordinator
from sidecar.membership.events import RECENT_EVENTS
from signet_cluster.admin import AdminState, Adoption, NodeDecision
from signet_cluster.converter import structure
from signet_cluster.errors import NotFound, ValidationFailed
from signet_cluster.protocol import CoordinatorsUpdate, ReplaceRequest

log = structlog.get_logger("signet_cluster.admin")
routes = web.RouteTableDef()


@routes.post("/api/cluster/replace")
async def replace(request: web.Request) -> web.Response:
    app = request.app
    refuse_with_etcd(app, "replace")
    require_coordinator(app)
    body = structure(await read_json(request), ReplaceRequest)
    registry = app[keys.REGISTRY]
    known = registry.addresses()
    admin = await app[keys.STATE].admin_state()
    if body.old == body.new:
        raise ValidationFailed(["old and new are the same node id"])
    old = registry.record(body.old)
    if old is None and body.old not in admin.joined():
        hint = did_you_mean(body.old, set(known))
        gone = " (it was removed already)" if body.old in app[COORDINATOR].removed else ""
        raise NotFound(f"no node {body.old!r} in the cluster{gone}{hint}")
    new = registry.record(body.new)
    if new is None:
        raise NotFound(
            f"no node {body.new!r} in the cluster: start it so that it heartbeats here "
            f"(or `join` it) first{did_you_mean(body.new, set(known))}"
        )
    if old is not None and old.state == "alive":
        raise ValidationFailed(
            [f"node {body.old!r} is alive (at {old.url}); stop it before replacing it"]
        )
    if new.state != "alive":
        raise ValidationFailed([f"node {body.new!r} is {new.state}; it must be alive"])
    joined = body.old in admin.joined() or (old is not None and old.joined)
    moved = sorted(agent for agent, node in admin.active_adoptions().items() if node == body.old)
    plan: dict[str, Any] = {
        "old": body.old,
        "new": body.new,
        "old_url": old.url if old is not None else admin.joined().get(body.old),
        "url": new.url,
        "joined": joined,
        "adoptions_moved": moved,
        "dry_run": body.dry_run,
        "warning": None,
    }
    if body.dry_run:
        return web.json_response(plan)
    now = app[keys.CLOCK].time()
    nodes = [NodeDecision(node_id=body.old, url=plan["old_url"] or None, state="removed", at=now)]
    if joined:
        nodes.append(NodeDecision(node_id=body.new, url=new.url, state="joined", at=now))
    adoptions = tuple(Adoption(agent_id=a, node_id=body.new, at=now) for a in moved)
    await record_decision(app, AdminState(nodes=tuple(nodes), adoptions=adoptions))
    if joined:
        plan["warning"] = await tell(
            app, new.url, CoordinatorsUpdate(add=coordinator_urls(app), node_id=body.new)
        )
    app[RECENT_EVENTS].record(
        "replaced", f"{body.new} replaced {body.old} (at {new.url})", body.new
    )
    log.warning(
        "node_replaced",
        old=body.old,
        new=body.new,
        url=new.url,
        joined=joined,
        adoptions_moved=moved,
    )
    return web.json_response(plan)
