"""Building and serving the dev daemon application."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from signet_cluster.daemon.roster import read_yaml_roster

from . import routes_misc, routes_read, routes_write
from .config import DevDaemonConfig
from .cost import parse_cost
from .faults import (
    HANG_GATE_KEY,
    HangGate,
    add_hook_routes,
    errors_middleware,
    faults_middleware,
    release_hung_requests,
)
from .schema import open_database, sync_roster
from .state import STATE_KEY, DaemonState, Faults
from .store import Store
from .util import Clock

#: How long a graceful stop waits for in-flight requests before cancelling them.
SHUTDOWN_TIMEOUT_S = 5.0


def _add_routes(app: web.Application, config: DevDaemonConfig) -> None:
    r = app.router
    r.add_get("/health", routes_misc.health)
    r.add_get("/api/status", routes_misc.api_status)
    r.add_get("/api/features", routes_misc.api_features)
    if config.is_rust:
        r.add_get("/api/version", routes_misc.api_version)
    if config.has_agents:
        r.add_get("/api/agents", routes_misc.list_agents)
        r.add_post("/api/agents", routes_misc.create_agent)
        r.add_get("/api/agents/{name}", routes_misc.get_agent)
        r.add_delete("/api/agents/{name}", routes_misc.delete_agent)
    r.add_post("/api/memory/recall", routes_read.recall)
    if config.is_rust:
        # Registered before the by-id route. The TS releases recorded answer
        # GET /api/memory/search from the by-id route (404 "not found"): reproduced by
        # not registering it at all.
        r.add_get("/api/memory/search", routes_read.rust_search)
        r.add_get("/memory/search", routes_read.rust_search)
    else:
        r.add_get("/memory/search", routes_read.ts_memory_search)
    for path in ("/api/memory/remember", "/api/memory/save", "/api/hook/remember"):
        r.add_post(path, routes_write.remember_route)
    r.add_post("/api/memory/modify", routes_write.modify_route)
    r.add_post("/api/memory/forget", routes_write.forget_route)
    r.add_get("/api/memory/{id}", routes_read.get_memory)
    r.add_patch("/api/memory/{id}", routes_write.patch_memory)
    r.add_delete("/api/memory/{id}", routes_write.delete_memory)
    r.add_post("/api/memory/{id}/recover", routes_write.recover_memory)
    r.add_get("/api/memories", routes_read.memories_list)
    r.add_post("/api/hooks/session-start", routes_misc.session_start)
    r.add_post("/api/knowledge/expand", routes_misc.knowledge_expand)
    add_hook_routes(app)


def make_devdaemon_app(config: DevDaemonConfig) -> web.Application:
    """A dev daemon for ``config`` (nothing is opened until the app starts)."""
    state = DaemonState(
        config=config,
        clock=Clock(rust=config.is_rust),
        faults=Faults(
            latency_ms=config.latency_ms,
            fail=config.fail,
            recall_cost=parse_cost(config.recall_cost),
        ),
    )
    app = web.Application(middlewares=[faults_middleware, errors_middleware])
    app[STATE_KEY] = state
    gate = HangGate()
    if config.fail == "hang":
        gate.close()
    app[HANG_GATE_KEY] = gate

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = open_database(config, state.clock)
        if config.has_agents and not config.is_rust:
            # TS syncs agents.roster[] at start, overwriting policies; Rust never does.
            sync_roster(db, read_yaml_roster(config.path), state.clock)
        state.attach_store(Store(db, config, state.clock))
        state.started_at = state.clock.now()
        try:
            yield
        finally:
            state.attach_store(None)
            db.close()

    app.cleanup_ctx.append(database)
    app.on_shutdown.append(release_hung_requests)
    _add_routes(app, config)
    return app


async def serve_devdaemon(
    config: DevDaemonConfig,
    ready: asyncio.Event | None = None,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled, then stop gracefully (in-flight requests may finish).

    ``ready`` is set once the socket listens; ``on_listening`` gets the bound URL (useful
    with ``port=0``).
    """
    runner = web.AppRunner(
        make_devdaemon_app(config), shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        addresses = runner.addresses
        port = int(addresses[0][1]) if addresses else config.port
        if on_listening is not None:
            on_listening(f"http://{config.host}:{port}")
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()


def ready_line(config: DevDaemonConfig, url: str) -> str:
    """The one line printed when the daemon listens."""
    return f"devdaemon ({config.flavor}) listening on {url}, workspace {config.path}"


async def _serve_until_signal(config: DevDaemonConfig, announce: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(
        serve_devdaemon(config, on_listening=lambda url: announce(ready_line(config, url)))
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # start-up failed (e.g. port in use): raise it
    finally:
        for task in (serving, stopping):
            task.cancel()
        await asyncio.gather(serving, stopping, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_devdaemon(config: DevDaemonConfig, announce: Callable[[str], None]) -> None:
    """Blocking entry for the CLIs: serve until SIGINT/SIGTERM, then stop gracefully."""
    asyncio.run(_serve_until_signal(config, announce))
