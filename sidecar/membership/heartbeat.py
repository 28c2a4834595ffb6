"""The heartbeat loop: every interval, describe this node to every coordinator (in parallel)
and keep the registry copy each one answers with. A coordinator applies its own heartbeat
to its registry directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.keys import current_summary
from sidecar.membership.coordinator import COORDINATOR, accept_heartbeat, local_view
from signet_cluster.converter import structure, unstructure
from signet_cluster.errors import ClusterError, Gone, PeerUnreachable
from signet_cluster.protocol import Heartbeat, HeartbeatReply

log = structlog.get_logger("signet_cluster.heartbeat")


def build_heartbeat(app: web.Application, known_registry: str | None) -> Heartbeat:
    identity = app[keys.IDENTITY]
    snapshot = app[keys.WATCHER].snapshot
    return Heartbeat(
        protocol=identity.protocol,
        node_id=identity.node_id,
        instance_id=identity.instance_id,
        url=identity.url,
        sidecar_version=identity.sidecar_version,
        daemon=snapshot.info(),
        agents=snapshot.agents,
        capabilities=("route",),
        seq=identity.next_seq(),
        sent_at=app[keys.CLOCK].time(),
        coordinator=identity.coordinator,
        known_registry=known_registry,
        spool=current_summary(app),
    )


async def send_heartbeat(app: web.Application, url: str) -> None:
    membership = app[keys.MEMBERSHIP]
    metrics = app[keys.METRICS]
    membership.record_attempt(url)
    heartbeat = build_heartbeat(app, membership.known_registry(url))
    metrics.heartbeats_sent.labels(coordinator=url).inc()
    started = time.perf_counter()
    try:
        response = await app[keys.PEERS].call(
            "POST", url, "/api/cluster/heartbeat", unstructure(heartbeat)
        )
    except PeerUnreachable as exc:
        _failure(app, url, exc.message, "unreachable")
        return
    metrics.heartbeat_seconds.labels(coordinator=url).observe(time.perf_counter() - started)
    if response.status == 200:
        untrusted = app[keys.PEERS].reply_problem(response)
        if untrusted is not None:
            # A forged or unsigned reply would hand this node someone else's routes.
            _failure(app, url, f"heartbeat reply not trusted: {untrusted}", "unauthenticated_reply")
            return
        try:
            reply = structure(response.body, HeartbeatReply)
        except ClusterError as exc:
            _failure(app, url, f"unusable heartbeat reply: {exc.message}", "bad_reply")
            return
        was_failing = membership.contact(url).error is not None
        membership.record_reply(url, reply)
        if was_failing:
            log.info("coordinator_reachable", coordinator=url)
        await learn_coordinators(app)
        return
    answer = response.body if isinstance(response.body, dict) else {}
    error, code = answer.get("error"), answer.get("code")
    if response.status == 410:
        log.warning(
            "removed_by_coordinator",
            coordinator=url,
            hint="this node is out of the cluster; `signet-cluster join` adds it back",
        )
        metrics.heartbeats_failed.labels(coordinator=url, reason="removed").inc()
        membership.record_failure(url, "this node was removed from the cluster by the coordinator")
        await membership.remove((url,))
        await membership.mark_removed(url)
        return
    if response.status == 409 and code != "node_id_in_use":
        _failure(app, url, f"protocol mismatch: {error}", "protocol_mismatch")
        return
    if response.status == 421:
        # Demoted: a learned coordinator is forgotten at once (learn_coordinators).
        membership.contact(url).not_coordinator = True
    _failure(
        app,
        url,
        f"heartbeat answered {response.status}: {error or response.body!r}"[:300],
        "rejected",
    )


def _failure(app: web.Application, url: str, error: str, reason: str) -> None:
    app[keys.METRICS].heartbeats_failed.labels(coordinator=url, reason=reason).inc()
    contact = app[keys.MEMBERSHIP].contact(url)
    if contact.error != error:
        log.warning("heartbeat_failed", coordinator=url, error=error)
    app[keys.MEMBERSHIP].record_failure(url, error)


async def learn_coordinators(app: web.Application) -> None:
    """Start heartbeating to coordinators named in replies (or in our own registry), and
    forget learned ones that have been unreachable and unlisted for longer than reap_after."""
    membership = app[keys.MEMBERSHIP]
    coordinator = app[keys.IDENTITY].coordinator
    learned = membership.learned_coordinators()
    if not coordinator:
        # Replies may still list this sidecar for a moment after it was demoted.
        learned.discard(membership.self_url)
    new = learned - set(membership.targets())
    if new:
        log.info("coordinators_learned", coordinators=sorted(new))
        await membership.add(tuple(sorted(new)))
    stale = membership.stale_coordinators(app[keys.SETTINGS].reap_after)
    if not coordinator and membership.self_url in membership.persisted:
        stale.append(membership.self_url)  # learned while it was a coordinator
    if stale:
        log.info("coordinators_forgotten", coordinators=stale)
        await membership.remove(tuple(stale))


def own_heartbeat(app: web.Application) -> None:
    """Apply this coordinator's own heartbeat to its registry. A coordinator removed from
    the cluster (through another coordinator, e.g. while it was down) is not in its own
    registry: it says so once and keeps serving, instead of failing every round."""
    state = app[COORDINATOR]
    try:
        accept_heartbeat(app, build_heartbeat(app, None), coordinator_proven=True)
    except Gone as exc:
        if not state.removed_self:
            log.warning("coordinator_removed", error=exc.message)
        state.removed_self = True
    else:
        state.removed_self = False


async def heartbeat_round(app: web.Application) -> None:
    identity = app[keys.IDENTITY]
    membership = app[keys.MEMBERSHIP]
    tasks = []
    if identity.coordinator:
        # Our own heartbeat goes straight into our registry: no HTTP to ourselves.
        own_heartbeat(app)
        membership.views[membership.self_url] = local_view(app)
        await learn_coordinators(app)
    else:
        # Demoted: the registry kept as a coordinator is no longer a view to route from.
        membership.views.pop(membership.self_url, None)
    for url in membership.targets():
        if url == membership.self_url:
            continue
        tasks.append(send_heartbeat(app, url))
    if tasks:
        await asyncio.gather(*tasks)


async def heartbeat_loop(app: web.Application) -> None:
    interval = app[keys.SETTINGS].heartbeat_interval
    watcher = app[keys.WATCHER]
    while True:
        watcher.changed.clear()
        try:
            await heartbeat_round(app)
        except Exception:
            log.exception("heartbeat_round_failed")
        # A changed roster goes out at once instead of waiting for the next tick.
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watcher.changed.wait(), timeout=interval)


async def heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(heartbeat_loop(app), name="heartbeat")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
