"""Replicating operator decisions (join, remove, adopt) and agent claims between
coordinators.

A decision is merged into this coordinator's state DB, applied to its registry, and pushed
to every other coordinator in the background; every few seconds each coordinator also pulls
the others' state, so a push lost to a partition is repaired. The merge is last-writer-wins
per node and per agent (signet_cluster.admin), so order and repetition do not matter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.membership.coordinator import COORDINATOR, coordinator_urls, log_new_collisions
from signet_cluster.admin import AdminState, Claim
from signet_cluster.converter import structure, structure_json, unstructure
from signet_cluster.errors import ClusterError, PeerUnreachable

log = structlog.get_logger("signet_cluster.admin_sync")
routes = web.RouteTableDef()
ADMIN_PATH = "/api/cluster/admin"
# Background pushes, kept so shutdown can cancel and await them.
ADMIN_TASKS = web.AppKey("admin_tasks", set[asyncio.Task[list[str]]])


def apply_admin(app: web.Application, state: AdminState) -> None:
    """Make the in-memory registry reflect the decisions."""
    registry = app[keys.REGISTRY]
    removed = state.removed()
    app[COORDINATOR].removed = removed
    for node_id in removed:
        registry.remove(node_id)
    for node_id, url in state.joined().items():
        registry.mark_joined(node_id, url)
    registry.set_adoptions(state.active_adoptions())
    registry.set_claims(state.held_claims())
    if registry.has_claim_changes():  # a removed node's claims are released
        app[COORDINATOR].claims_dirty.set()
    log_new_collisions(app)


async def load_admin(app: web.Application) -> None:
    apply_admin(app, await app[keys.STATE].admin_state())


def other_coordinators(app: web.Application) -> list[str]:
    """Every coordinator but this one: those the registry knows, and those this sidecar
    heartbeats to (a member just promoted knows its coordinators only from there)."""
    own = app[keys.IDENTITY].url
    urls = dict.fromkeys([*coordinator_urls(app), *app[keys.MEMBERSHIP].targets()])
    return [u for u in urls if u != own]


async def record_decision(app: web.Application, decision: AdminState) -> AdminState:
    """Merge a decision made here, apply it, and push it to the other coordinators."""
    merged, changed = await app[keys.STATE].merge_admin(decision)
    if changed:
        apply_admin(app, merged)
        task = asyncio.create_task(push(app, merged), name="admin-push")
        app[ADMIN_TASKS].add(task)
        task.add_done_callback(app[ADMIN_TASKS].discard)
    return merged


async def flush_claims(app: web.Application) -> None:
    """Persist and replicate the claims the registry saw since the last flush."""
    changes = app[keys.REGISTRY].take_claim_changes()
    if not changes:
        return
    at = app[keys.CLOCK].time()
    claims = tuple(
        Claim(agent_id=agent_id, node_id=node_id, since=since, at=at)
        for (agent_id, node_id), since in sorted(changes.items())
    )
    await record_decision(app, AdminState(claims=claims))


async def claims_loop(app: web.Application) -> None:
    dirty = app[COORDINATOR].claims_dirty
    while True:
        await dirty.wait()
        dirty.clear()
        try:
            await flush_claims(app)
        except Exception:
            log.exception("claims_flush_failed")


async def push(app: web.Application, state: AdminState) -> list[str]:
    """Send our state to every other coordinator; returns the ones that failed."""
    failed = []
    body = unstructure(state)
    for url in other_coordinators(app):
        try:
            response = await app[keys.PEERS].call("POST", url, ADMIN_PATH, body)
        except PeerUnreachable as exc:
            failed.append(url)
            log.info("admin_push_failed", coordinator=url, error=exc.message)
            continue
        if response.status != 200:
            failed.append(url)
            log.info("admin_push_refused", coordinator=url, status=response.status)
    return failed


async def pull(app: web.Application) -> bool:
    """Fetch and merge every other coordinator's state; True when something changed here."""
    changed_any = False
    for url in other_coordinators(app):
        try:
            response = await app[keys.PEERS].call("GET", url, ADMIN_PATH)
            if response.status != 200:
                continue
            remote = structure(response.body, AdminState)
        except (PeerUnreachable, ClusterError):
            continue
        merged, changed = await app[keys.STATE].merge_admin(remote)
        if changed:
            apply_admin(app, merged)
            changed_any = True
            log.info("admin_state_merged", source=url)
    return changed_any


@routes.get(ADMIN_PATH)
async def get_admin(request: web.Request) -> web.Response:
    return web.json_response(unstructure(await request.app[keys.STATE].admin_state()))


@routes.post(ADMIN_PATH)
async def post_admin(request: web.Request) -> web.Response:
    """Another coordinator's state: merge it (newest entry wins)."""
    incoming = structure_json(await request.read(), AdminState)
    merged, changed = await request.app[keys.STATE].merge_admin(incoming)
    if changed and request.app[keys.IDENTITY].coordinator:
        apply_admin(request.app, merged)
    return web.json_response({"merged": changed})


async def sync_loop(app: web.Application) -> None:
    # Anti-entropy: cheap (one small GET per coordinator), and bounded by the TTL so a
    # decision reaches every coordinator well before a member could be reaped.
    period = max(1.0, 2 * app[keys.SETTINGS].heartbeat_interval)
    while True:
        await asyncio.sleep(period)
        if app[keys.IDENTITY].coordinator:
            try:
                await pull(app)
            except Exception:
                log.exception("admin_pull_failed")


async def admin_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    app[ADMIN_TASKS] = set()
    await load_admin(app)
    task = asyncio.create_task(sync_loop(app), name="admin-sync")
    claims = asyncio.create_task(claims_loop(app), name="claims-flush")
    yield
    task.cancel()
    claims.cancel()
    for pending in [task, claims, *app[ADMIN_TASKS]]:
        pending.cancel()
        with suppress(asyncio.CancelledError):
            await pending
