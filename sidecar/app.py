"""`make_app(settings)`: the sidecar as an aiohttp application. Nothing runs at import;
resources and loops start in cleanup contexts, in dependency order, and stop in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sidecar import keys
from sidecar.control import admin_api, cluster_api, replace_api, routing_api
from sidecar.etcd.backend import etcd_ctx
from sidecar.federation import contribute
from sidecar.federation.health import federation_ctx
from sidecar.membership import admin_sync
from sidecar.membership.coordinator import COORDINATOR, CoordinatorState, coordinator_ctx
from sidecar.membership.events import RECENT_EVENTS, RecentEvents
from sidecar.membership.failsafe import failsafe_ctx
from sidecar.membership.heartbeat import heartbeat_ctx
from sidecar.membership.identity import NodeIdentity, default_node_id
from sidecar.membership.peers import PeerClient
from sidecar.membership.refusals import REFUSALS, HeartbeatRefusals
from sidecar.membership.view import Membership
from sidecar.membership.watcher import watcher_ctx
from sidecar.memory.handoff import handoff_ctx
from sidecar.memory.passthrough import add_passthrough
from sidecar.memory.proxy import proxy_ctx
from sidecar.middlewares import errors, origin_form, request_context
from sidecar.ops import health, metrics, openapi, topology
from sidecar.pipeline.agent_api import add_agent_api
from sidecar.pipeline.routes import add_memory_api
from sidecar.security.auth import AuthState, auth_ctx, authenticate, check_reply
from sidecar.security.auth import routes as auth_routes
from sidecar.security.limits import (
    CONNECTIONS,
    ConnectionGuard,
    body_limits,
    connection_limits,
)
from signet_cluster.clock import Clock, SystemClock
from signet_cluster.registry import Registry
from signet_cluster.settings import Settings
from signet_cluster.state import StateStore

# Cluster messages are small; a heartbeat with the maximum 1,000 agents is about 150 KiB
# (the limit is the max_body_bytes setting, default 1 MiB).


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    # aiohttp's default total timeout is 300 s; every call here also passes its own.
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=max(settings.peer_timeout, settings.daemon_timeout)),
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, keepalive_timeout=30),
    )
    app[keys.HTTP] = session
    yield
    await session.close()


async def state_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = StateStore(settings.state_path / "state.db")
    await store.open()
    app[keys.STATE] = store
    node_id = await store.node_id(settings.node_id, new=default_node_id())
    # A run-time promotion (`signet-cluster promote`) outlives restarts.
    promoted = await store.meta("coordinator")
    coordinator = settings.coordinator if promoted is None else promoted == "1"
    identity = NodeIdentity(node_id=node_id, url=settings.url, coordinator=coordinator)
    app[keys.IDENTITY] = identity
    auth = app[keys.AUTH]
    app[keys.PEERS] = PeerClient(
        app[keys.HTTP],
        node_id,
        settings.peer_timeout,
        signer=auth.signer(node_id),
        ssl_context=lambda: auth.tls.client_context,
        coordinator_signer=auth.coordinator_signer(node_id),
        is_coordinator=lambda: identity.coordinator,
        reply_problem=lambda response: check_reply(auth, response),
    )
    membership = Membership(
        self_url=settings.url,
        configured=settings.coordinators,
        state=store,
        clock=app[keys.CLOCK],
        ttl=settings.ttl,
    )
    await membership.load()
    app[keys.MEMBERSHIP] = membership
    yield
    await store.close()


def make_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    app = web.Application(
        middlewares=[
            connection_limits,
            origin_form,
            request_context,
            errors,
            body_limits,
            authenticate,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    # Counts the listener's connections once the runner has a server (guard.watch).
    app[CONNECTIONS] = ConnectionGuard(
        settings.max_connections, settings.max_connections_per_source
    )
    # Keys and certificates are read now: a sidecar that cannot authenticate does not start.
    app[keys.AUTH] = AuthState(settings)
    app[keys.AUTH].load()
    app[keys.CLOCK] = clock or SystemClock()
    app[REFUSALS] = HeartbeatRefusals(app[keys.CLOCK])
    app[RECENT_EVENTS] = RecentEvents(app[keys.CLOCK])
    app[keys.REGISTRY] = Registry(
        ttl=settings.ttl, reap_after=settings.reap_after, clock=app[keys.CLOCK]
    )
    app[COORDINATOR] = CoordinatorState()
    metrics.install(app)  # first: handlers and loops count into it from the start
    app.add_routes(health.routes)
    app.add_routes(cluster_api.routes)
    app.add_routes(auth_routes)
    app.add_routes(openapi.routes)
    app.add_routes(topology.routes)
    app.add_routes(admin_api.routes)
    app.add_routes(replace_api.routes)
    app.add_routes(admin_sync.routes)
    app.add_routes(routing_api.routes)
    app.add_routes(contribute.routes)
    add_memory_api(app)
    add_agent_api(app)
    app.cleanup_ctx.extend(
        [
            auth_ctx,
            http_ctx,
            state_ctx,
            watcher_ctx,
            proxy_ctx,
            federation_ctx,
            # Before the heartbeats, so the first one already describes the spool.
            handoff_ctx,
            coordinator_ctx,
            admin_sync.admin_sync_ctx,
            # With the etcd backend the registry lives in etcd: no heartbeats to send.
            etcd_ctx if settings.registry_backend == "etcd" else heartbeat_ctx,
            failsafe_ctx,
        ]
    )
    # Last, always: our namespace's 404, then the catch-all to the local daemon.
    cluster_api.add_cluster_fallback(app)
    add_passthrough(app)
    return app
