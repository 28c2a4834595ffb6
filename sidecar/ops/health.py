"""Liveness (the process answers) and readiness (it can do its job, with the reason if not)."""

from __future__ import annotations

from aiohttp import web

from sidecar import keys
from sidecar.etcd.backend import ETCD
from sidecar.memory.handoff import spool_problem
from sidecar.security.limits import CONNECTIONS

routes = web.RouteTableDef()


@routes.get("/livez")
async def livez(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def exhaustion(app: web.Application) -> str | None:
    """A resource this node has run out of (connections, file descriptors, spool disk):
    not ready, so load balancers and operators send traffic elsewhere."""
    guard = app.get(CONNECTIONS)
    if guard is not None:
        problem = guard.exhaustion()
        if problem:
            return problem
    problem = spool_problem(app)
    if problem:
        return f"{problem}: new writes for unreachable owners get 503"
    return None


def readiness(app: web.Application) -> tuple[bool, str]:
    problem = exhaustion(app)
    if problem:
        return False, problem
    snapshot = app[keys.WATCHER].snapshot
    if not snapshot.healthy:
        return False, snapshot.error or "local daemon is not healthy"
    if ETCD in app:
        return app[ETCD].readiness()
    identity = app[keys.IDENTITY]
    membership = app[keys.MEMBERSHIP]
    targets = [u for u in membership.targets() if u != membership.self_url]
    if identity.coordinator:
        return True, "ready"
    if not targets:
        if membership.removed_by is not None:
            # Out of the cluster by an operator's decision: its agents are not routed here
            # any more, so a load balancer or unit check must not count it as serving.
            return False, (
                f"removed from the cluster (by {membership.removed_by}); "
                "`signet-cluster join HOST:PORT` adds it back"
            )
        stopped = membership.told_to_stop()
        if stopped:
            return False, (
                "removed from the cluster by "
                f"{', '.join(stopped)}; `signet-cluster join HOST:PORT` adds it back"
            )
        return True, "ready (standalone: no coordinator configured)"
    contacts = [membership.contact(u) for u in targets]
    if any(c.last_ok is not None and c.error is None for c in contacts):
        return True, "ready"
    view = membership.latest()
    errors = "; ".join(f"{c.url}: {c.error or 'no answer yet'}" for c in contacts)
    if view is not None:
        age = app[keys.CLOCK].monotonic() - view.received_at
        return False, f"no coordinator answers (routing from a table {age:.1f}s old): {errors}"
    return False, f"no coordinator has answered yet: {errors}"


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    ready, reason = readiness(request.app)
    return web.json_response(
        {"ready": ready, "reason": reason, "node_id": request.app[keys.IDENTITY].node_id},
        status=200 if ready else 503,
    )
