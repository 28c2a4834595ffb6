"""The coordinator role: accept heartbeats into the registry, answer with the registry,
expire silent peers. Any sidecar can hold it (settings `coordinator = true`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import attrs
import structlog
from aiohttp import web

from signet_cluster.errors import Gone, NotCoordinator, ProtocolMismatch
from signet_cluster.protocol import Heartbeat, HeartbeatReply
from signet_cluster.registry import Registry, RegistryEvent

from . import keys
from .membership import ClusterView

log = structlog.get_logger("signet_cluster.coordinator")


@attrs.define
class CoordinatorState:
    """Coordinator-only state beside the registry: removal tombstones and the reply cache."""

    removed: set[str] = attrs.field(factory=set)
    reply_cache: tuple[str, HeartbeatReply] | None = None


COORDINATOR = web.AppKey("coordinator", CoordinatorState)


def registry_tag(app: web.Application) -> str:
    return f"{app[keys.IDENTITY].instance_id[:12]}:{app[keys.REGISTRY].version}"


def coordinator_urls(app: web.Application) -> tuple[str, ...]:
    """This coordinator, the configured ones, and every alive node that says it is one."""
    urls = [app[keys.IDENTITY].url, *app[keys.SETTINGS].coordinators]
    urls += [p.url for p in app[keys.REGISTRY].peers() if p.coordinator and p.alive]
    return tuple(sorted({u.rstrip("/") for u in urls}))


def full_reply(app: web.Application, protocol: int) -> HeartbeatReply:
    state = app[COORDINATOR]
    tag = registry_tag(app)
    if state.reply_cache is not None and state.reply_cache[0] == tag:
        cached = state.reply_cache[1]
        return cached if cached.protocol == protocol else attrs.evolve(cached, protocol=protocol)
    registry = app[keys.REGISTRY]
    routes, collisions = registry.routing()
    # Ages change every instant; they are only shown by `status`, so replies leave them out
    # and one reply object serves every node until the registry changes.
    peers = tuple(attrs.evolve(p, last_seen_age_s=None) for p in registry.peers())
    reply = HeartbeatReply(
        protocol=protocol,
        coordinator_id=app[keys.IDENTITY].node_id,
        registry=tag,
        ttl_s=registry.ttl,
        peers=peers,
        routes=routes,
        coordinators=coordinator_urls(app),
        collisions=collisions,
    )
    state.reply_cache = (tag, reply)
    return reply


def accept_heartbeat(app: web.Application, heartbeat: Heartbeat) -> HeartbeatReply:
    """Validate membership and protocol, apply to the registry, build the reply."""
    if not app[keys.IDENTITY].coordinator:
        raise NotCoordinator(
            "this sidecar is not a coordinator",
            details={"coordinators": list(app[keys.MEMBERSHIP].targets())},
        )
    ours = app[keys.IDENTITY].protocol
    protocol = ours.negotiate(heartbeat.protocol)
    if protocol is None:
        raise ProtocolMismatch(
            f"no common protocol version: this coordinator speaks {ours.min}-{ours.max}, "
            f"node {heartbeat.node_id} speaks {heartbeat.protocol.min}-{heartbeat.protocol.max}",
            details={"supported": {"min": ours.min, "max": ours.max}},
        )
    if heartbeat.node_id in app[COORDINATOR].removed:
        raise Gone(
            f"node {heartbeat.node_id} was removed from the cluster; run `signet-cluster join` to re-add it"
        )
    registry = app[keys.REGISTRY]
    for event in registry.apply_heartbeat(heartbeat, protocol):
        _log_event(event)
    reply = full_reply(app, protocol)
    if heartbeat.known_registry == reply.registry:
        return HeartbeatReply(
            protocol=protocol,
            coordinator_id=reply.coordinator_id,
            registry=reply.registry,
            ttl_s=reply.ttl_s,
            unchanged=True,
            coordinators=reply.coordinators,
        )
    return reply


def local_view(app: web.Application) -> ClusterView:
    reply = full_reply(app, app[keys.IDENTITY].protocol.max)
    return ClusterView.from_reply(app[keys.IDENTITY].url, reply, app[keys.CLOCK].monotonic())


def _log_event(event: RegistryEvent) -> None:
    if event.kind == "went_down":
        log.warning("peer_expired", node_id=event.node_id, age_s=round(event.age_s or 0, 3))
    elif event.kind == "reaped":
        log.info("peer_reaped", node_id=event.node_id)
    elif event.kind == "joined_cluster":
        log.info("peer_discovered", node_id=event.node_id)
    elif event.kind == "came_back":
        log.info("peer_back", node_id=event.node_id)
    elif event.kind == "roster_changed":
        log.info("peer_roster_changed", node_id=event.node_id)


async def expiry_loop(app: web.Application) -> None:
    registry: Registry = app[keys.REGISTRY]
    # Check four times per heartbeat interval so a node is marked down soon after its TTL.
    period = app[keys.SETTINGS].heartbeat_interval / 4
    while True:
        for event in registry.expire():
            _log_event(event)
        await asyncio.sleep(period)


async def coordinator_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[COORDINATOR]
    store = app[keys.STATE]
    state.removed = await store.removed_nodes()
    for row in await store.joined_peers():
        app[keys.REGISTRY].mark_joined(str(row["node_id"]), str(row["url"]))
    task = asyncio.create_task(expiry_loop(app), name="expiry")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
