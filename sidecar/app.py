"""`make_app(settings)`: the sidecar as an aiohttp application. Nothing runs at import;
resources and loops start in cleanup contexts, in dependency order, and stop in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from signet_cluster.clock import Clock, SystemClock
from signet_cluster.registry import Registry
from signet_cluster.settings import Settings
from signet_cluster.state import StateStore

from . import cluster_api, health, keys
from .coordinator import COORDINATOR, CoordinatorState, coordinator_ctx
from .heartbeat import heartbeat_ctx
from .identity import NodeIdentity
from .membership import Membership
from .middlewares import errors, request_context
from .peers import PeerClient
from .watcher import watcher_ctx

# Cluster messages are small; a heartbeat with the maximum 1,000 agents is about 150 KiB.
MAX_BODY_BYTES = 1024 * 1024


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
    node_id = await store.node_id(settings.node_id)
    identity = NodeIdentity(node_id=node_id, url=settings.url, coordinator=settings.coordinator)
    app[keys.IDENTITY] = identity
    app[keys.PEERS] = PeerClient(app[keys.HTTP], node_id, settings.peer_timeout)
    membership = Membership(
        self_url=settings.url, configured=settings.coordinators, state=store, clock=app[keys.CLOCK]
    )
    await membership.load()
    app[keys.MEMBERSHIP] = membership
    yield
    await store.close()


def make_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    app = web.Application(middlewares=[request_context, errors], client_max_size=MAX_BODY_BYTES)
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock or SystemClock()
    app[keys.REGISTRY] = Registry(
        ttl=settings.ttl, reap_after=settings.reap_after, clock=app[keys.CLOCK]
    )
    app[COORDINATOR] = CoordinatorState()
    app.add_routes(health.routes)
    app.add_routes(cluster_api.routes)
    app.cleanup_ctx.extend([http_ctx, state_ctx, watcher_ctx, coordinator_ctx, heartbeat_ctx])
    return app
