"""Running the sidecar in the foreground (what `signet-cluster serve` and the units do):
listen, log one start line, and on SIGTERM/SIGINT stop accepting, let in-flight requests
finish within `shutdown_timeout`, then stop the loops and close the state DB."""

from __future__ import annotations

import asyncio
import gc
import signal
from contextlib import suppress

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.app import make_app
from sidecar.pipeline.fastlane import SidecarRunner
from sidecar.security.limits import server_options
from signet_cluster.clock import Clock
from signet_cluster.settings import Settings

log = structlog.get_logger("signet_cluster.sidecar")


async def run_sidecar(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully."""
    app = make_app(settings, clock=clock)
    runner = SidecarRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        **server_options(settings),
    )
    await runner.setup()
    # Everything loaded so far (modules, the app) lives as long as the process: keep it out
    # of the garbage collector's passes. And collect young objects less often: nearly all
    # die by reference counting, but at the default threshold (700) a busy coordinator
    # promotes in-flight requests into the old generations, whose full passes then stall
    # the event loop for tens of ms every few seconds (bench/capacity.py: 1.5 s of GC per
    # 17 s of CPU at 1,000 nodes, 0.15 s with this).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    with suppress(NotImplementedError, RuntimeError, AttributeError):
        # SIGHUP re-reads key and certificate files now (they are also polled each second).
        loop.add_signal_handler(signal.SIGHUP, app[keys.AUTH].reload, True)
        installed.append(signal.SIGHUP)
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            backlog=1024,
            ssl_context=app[keys.AUTH].tls.server_context(),
        )
        await site.start()
        identity = app[keys.IDENTITY]
        log.info(
            "sidecar_started",
            node_id=identity.node_id,
            listen=f"{settings.host}:{settings.port}",
            url=identity.url,
            coordinator=identity.coordinator,
            coordinators=list(settings.coordinators),
            daemon=settings.daemon_url,
            auth=app[keys.AUTH].describe(),
        )
        await stop.wait()
        log.info("sidecar_stopping", grace_s=settings.shutdown_timeout)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        log.info("sidecar_stopped")
