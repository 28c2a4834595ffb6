"""The coordinator role: accept heartbeats into the registry, answer with the registry,
expire silent peers. Any sidecar can hold it (settings `coordinator = true`)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import attrs
import structlog
from aiohttp import web

from sidecar import keys
from sidecar.membership.events import RECENT_EVENTS
from sidecar.membership.view import ClusterView
from signet_cluster.converter import unstructure
from signet_cluster.errors import Gone, NodeIdInUse, NotCoordinator, ProtocolMismatch
from signet_cluster.protocol import Collision, Heartbeat, HeartbeatReply
from signet_cluster.registry import Registry, RegistryEvent

log = structlog.get_logger("signet_cluster.coordinator")
# Registries this large are rebuilt for heartbeat replies at most every COALESCE_S seconds.
COALESCE_ABOVE = 100
COALESCE_S = 0.25


@attrs.define
class CoordinatorState:
    """Coordinator-only state beside the registry: removal tombstones and the reply cache."""

    removed: set[str] = attrs.field(factory=set)
    reply_cache: tuple[str, HeartbeatReply] | None = None
    # When reply_cache was built (time.monotonic: a cost throttle, not cluster time).
    reply_built_at: float = 0.0
    # Replies as JSON bytes by (registry tag, protocol, unchanged, warming, gzip): a full reply is
    # O(nodes) to serialise, and every node asks for the same few.
    encoded: dict[tuple[str, int, bool, bool, bool], tuple[bytes, str]] = attrs.field(factory=dict)
    # Collisions already logged, so each is logged once when it appears or changes.
    collisions: frozenset[Collision] = frozenset()
    # This coordinator's own node was removed (logged once; sidecar.membership.heartbeat).
    removed_self: bool = False
    # When this process became a coordinator (app clock, monotonic): its registry is
    # rebuilt from heartbeats within a TTL, and replies say `warming` until then.
    since: float = 0.0
    # Set when the registry saw a new or released agent claim: the admin sync loop
    # persists and replicates it (sidecar.membership.admin_sync).
    claims_dirty: asyncio.Event = attrs.field(factory=asyncio.Event)


COORDINATOR = web.AppKey("coordinator", CoordinatorState)


def warming(app: web.Application) -> bool:
    """True for a TTL after this sidecar started as, or became, a coordinator."""
    return app[keys.CLOCK].monotonic() - app[COORDINATOR].since < app[keys.REGISTRY].ttl


def registry_tag(app: web.Application) -> str:
    return f"{app[keys.IDENTITY].instance_id[:12]}:{app[keys.REGISTRY].version}"


def coordinator_urls(app: web.Application) -> tuple[str, ...]:
    """This coordinator, the configured ones, and every alive node that proved it is one
    (its heartbeat came with a coordinator credential: Registry.apply_heartbeat)."""
    urls = [app[keys.IDENTITY].url, *app[keys.SETTINGS].coordinators]
    urls += [p.url for p in app[keys.REGISTRY].peers() if p.coordinator and p.alive]
    return tuple(sorted({u.rstrip("/") for u in urls}))


def full_reply(app: web.Application, protocol: int) -> HeartbeatReply:
    state = app[COORDINATOR]
    tag = registry_tag(app)
    registry = app[keys.REGISTRY]
    if state.reply_cache is not None and (
        state.reply_cache[0] == tag
        # While many nodes join at once every heartbeat changes the registry, and rebuilding
        # the O(nodes) reply for each is O(nodes²): a large registry is rebuilt at most every
        # COALESCE_S. The reply names the version it holds, so nodes catch up next beat.
        or (
            len(registry) >= COALESCE_ABOVE and time.monotonic() - state.reply_built_at < COALESCE_S
        )
    ):
        cached = state.reply_cache[1]
        return cached if cached.protocol == protocol else attrs.evolve(cached, protocol=protocol)
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
    state.reply_built_at = time.monotonic()
    return reply


def encode_reply(
    app: web.Application, reply: HeartbeatReply, *, gzip_ok: bool = False
) -> tuple[bytes, str | None, str]:
    """The reply as JSON, serialised (and compressed) once per registry version and
    protocol; returns (body, content encoding, SHA-256 of the JSON before compression: what
    the reply's signature covers). A full reply is gzipped when the node
    accepts it: with a thousand nodes it is 1.6 MB of JSON and 50 KB compressed, and every
    node downloads it after each registry change."""
    encoded = app[COORDINATOR].encoded
    compress = gzip_ok and not reply.unchanged
    key = (reply.registry, reply.protocol, reply.unchanged, reply.warming, compress)
    cached = encoded.get(key)
    if cached is None:
        if len(encoded) >= 8:
            encoded.clear()  # older versions are never asked for again
        body = json.dumps(unstructure(reply)).encode()
        digest = hashlib.sha256(body).hexdigest()
        if compress:
            body = gzip.compress(body, compresslevel=6, mtime=0)
        cached = encoded[key] = (body, digest)
    return cached[0], "gzip" if compress else None, cached[1]


def require_coordinator(app: web.Application) -> None:
    """421 naming the coordinators, for what only a coordinator does (the CLI retries there)."""
    if not app[keys.IDENTITY].coordinator:
        raise NotCoordinator(
            "this sidecar is not a coordinator; send this to one of its coordinators",
            details={"coordinators": app[keys.MEMBERSHIP].targets()},
        )


def accept_heartbeat(
    app: web.Application, heartbeat: Heartbeat, *, coordinator_proven: bool = False
) -> HeartbeatReply:
    """Validate membership and protocol, apply to the registry, build the reply.
    `coordinator_proven`: the sender holds a coordinator credential (sidecar.security.auth)."""
    require_coordinator(app)
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
    refuse_twin(registry, heartbeat)
    events = registry.apply_heartbeat(heartbeat, protocol, coordinator_proven=coordinator_proven)
    if registry.has_claim_changes():
        app[COORDINATOR].claims_dirty.set()
        log_new_collisions(app)
    app[keys.METRICS].observe_events(events)
    for event in events:
        _log_event(app, event)
    reply = full_reply(app, protocol)
    if heartbeat.known_registry == reply.registry:
        reply = HeartbeatReply(
            protocol=protocol,
            coordinator_id=reply.coordinator_id,
            registry=reply.registry,
            ttl_s=reply.ttl_s,
            unchanged=True,
            coordinators=reply.coordinators,
        )
    return attrs.evolve(reply, warming=True) if warming(app) else reply


def refuse_twin(registry: Registry, heartbeat: Heartbeat) -> None:
    """Two live sidecars with one node id would take turns owning its agents (writes split
    over two daemons). While one heartbeats, another instance at another URL is refused;
    after a TTL of silence (a restart at a new address) the new one takes over."""
    record = registry.record(heartbeat.node_id)
    held = record.heartbeat if record is not None else None
    if (
        record is None
        or held is None
        or record.last_seen is None
        or held.instance_id == heartbeat.instance_id
        or held.url == heartbeat.url
        or registry.clock.monotonic() - record.last_seen > registry.ttl
    ):
        return
    raise NodeIdInUse(
        f"node id {heartbeat.node_id!r} is in use by the live sidecar at {held.url}; "
        "give this sidecar its own node_id (or state_dir), or stop the other one",
        details={"node_id": heartbeat.node_id, "url": held.url},
    )


def log_new_collisions(app: web.Application) -> None:
    state = app[COORDINATOR]
    current = frozenset(app[keys.REGISTRY].routing()[1])
    for collision in sorted(current - state.collisions, key=lambda c: c.agent_id):
        app[RECENT_EVENTS].record(
            "collision",
            f"agent {collision.agent_id} claimed by {', '.join(collision.claimants)}; "
            f"owner {collision.winner} ({collision.rule})",
        )
        log.warning(
            "agent_collision",
            agent_id=collision.agent_id,
            claimants=list(collision.claimants),
            owner=collision.winner,
            rule=collision.rule,
        )
    state.collisions = current


def local_view(app: web.Application) -> ClusterView:
    reply = full_reply(app, app[keys.IDENTITY].protocol.max)
    return ClusterView.from_reply(app[keys.IDENTITY].url, reply, app[keys.CLOCK].monotonic())


def _log_event(app: web.Application, event: RegistryEvent) -> None:
    recent = app[RECENT_EVENTS]
    if event.kind == "went_down":
        log.warning("peer_expired", node_id=event.node_id, age_s=round(event.age_s or 0, 3))
        recent.record(
            "down",
            f"{event.node_id} went down (silent {event.age_s or 0:.1f}s)",
            event.node_id,
        )
    elif event.kind == "reaped":
        log.info("peer_reaped", node_id=event.node_id)
        recent.record("reaped", f"{event.node_id} forgotten after a long silence", event.node_id)
    elif event.kind == "joined_cluster":
        log.info("peer_discovered", node_id=event.node_id)
        recent.record("discovered", f"{event.node_id} heartbeats here", event.node_id)
    elif event.kind == "came_back":
        log.info("peer_back", node_id=event.node_id)
        recent.record("back", f"{event.node_id} came back", event.node_id)
    elif event.kind == "roster_changed":
        log.info("peer_roster_changed", node_id=event.node_id)


# The state-DB key under which a coordinator keeps the nodes it knows (id -> URL), so that
# after a restart a node that never comes back is listed as down instead of missing.
SEEN_NODES_KEY = "seen_nodes"
SEEN_SAVE_EVERY_S = 5.0


async def restore_seen(app: web.Application) -> None:
    raw = await app[keys.STATE].meta(SEEN_NODES_KEY)
    try:
        seen = json.loads(raw) if raw else {}
    except ValueError:
        seen = {}
    if not isinstance(seen, dict):
        return
    removed = app[COORDINATOR].removed
    own = app[keys.IDENTITY].node_id
    registry = app[keys.REGISTRY]
    for node_id, url in seen.items():
        if isinstance(url, str) and node_id not in removed and node_id != own:
            registry.restore_seen(node_id, url)


async def save_seen(app: web.Application, saved: dict[str, str]) -> dict[str, str]:
    """Persist the registry's node ids and URLs when they changed; returns what is saved."""
    current = app[keys.REGISTRY].addresses()
    if current != saved:
        await app[keys.STATE].set_meta(SEEN_NODES_KEY, json.dumps(current, sort_keys=True))
    return current


async def expiry_loop(app: web.Application) -> None:
    registry: Registry = app[keys.REGISTRY]
    # Check four times per heartbeat interval so a node is marked down soon after its TTL.
    period = app[keys.SETTINGS].heartbeat_interval / 4
    saved: dict[str, str] | None = None
    saved_at = 0.0
    while True:
        events = registry.expire()
        if registry.has_claim_changes():  # a reaped node's claims are released
            app[COORDINATOR].claims_dirty.set()
        app[keys.METRICS].observe_events(events)
        for event in events:
            _log_event(app, event)
        if app[keys.IDENTITY].coordinator and time.monotonic() - saved_at >= SEEN_SAVE_EVERY_S:
            if saved is None:
                await restore_seen(app)
            saved = await save_seen(app, saved or {})
            saved_at = time.monotonic()
        await asyncio.sleep(period)


async def coordinator_ctx(app: web.Application) -> AsyncIterator[None]:
    app[COORDINATOR].since = app[keys.CLOCK].monotonic()
    task = asyncio.create_task(expiry_loop(app), name="expiry")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
