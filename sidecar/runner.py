"""Running the sidecar in the foreground (what `signet-cluster serve` and the units do):
check the state directory, raise the file descriptor limit, listen, log one start line,
and on SIGTERM/SIGINT stop accepting, let in-flight requests finish within
`shutdown_timeout`, then stop the loops and close the state DB."""

from __future__ import annotations

import asyncio
import gc
import resource
import signal
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.app import make_app
from sidecar.pipeline.fastlane import SidecarRunner
from sidecar.security.limits import (
    CONNECTIONS,
    PRIORITY_HEADROOM,
    ConnectionGuard,
    server_options,
)
from signet_cluster.clock import Clock
from signet_cluster.errors import ConfigError
from signet_cluster.settings import Settings

log = structlog.get_logger("signet_cluster.sidecar")

# Descriptors kept for everything but client connections: the pools to peers (256) and
# to the daemon (128), the state and spool databases, the log, and some slack.
FD_RESERVE = 512
ACCEPT_ERROR = "socket.accept() out of system resource"


def check_state_dir(path: Path) -> None:
    """The state directory must exist and take writes; raises ConfigError in one line."""
    probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            [
                f"state_dir: {path} cannot be written ({exc.strerror or exc}); the sidecar "
                "keeps its node id, registry copy and write spool there"
            ]
        ) from None


def raise_fd_limit() -> int | None:
    """Raise the soft open-files limit to the hard limit (the default soft limit, 1024 on
    most Linux systems, is a few hundred idle connections away); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # macOS says unlimited but refuses more than OPEN_MAX per process
    if soft != resource.RLIM_INFINITY and soft < hard:
        for target in (hard, 10240):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
                break
            except (ValueError, OSError):
                continue
    return None if soft == resource.RLIM_INFINITY else int(soft)


def accept_backlog(fd_limit: int | None) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go:
    a small descriptor limit cannot absorb a burst of 1,024 (one eighth of it can)."""
    return 1024 if fd_limit is None else max(16, min(1024, fd_limit // 8))


def fit_connections(guard: ConnectionGuard, fd_limit: int | None) -> None:
    """Keep max_connections, its headroom for probes and one accept burst inside the
    descriptor limit."""
    if fd_limit is None:
        return
    room = max(16, fd_limit - FD_RESERVE - PRIORITY_HEADROOM - accept_backlog(fd_limit))
    if guard.max_total > room:
        log.warning(
            "max_connections_lowered",
            configured=guard.max_total,
            effective=room,
            open_files_limit=fd_limit,
        )
        guard.max_total = room
        guard.max_per_source = min(guard.max_per_source, room)


def count_accept_errors(loop: asyncio.AbstractEventLoop, guard: ConnectionGuard) -> None:
    """Count asyncio's accept failures (out of descriptors) for readiness and metrics. Its
    log line repeats thousands of times a second then; logconfig rate-limits it."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            exc = context.get("exception")
            guard.accept_failed(str(getattr(exc, "strerror", None) or exc or ACCEPT_ERROR))
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def reload_on_sighup(app: web.Application) -> None:
    """SIGHUP: re-read the key and certificate files now, and say what is loaded after it
    (key ids and files, never secrets), whether or not anything changed."""
    auth = app[keys.AUTH]
    auth.reload(True)
    current = auth.keyring.current
    log.info(
        "sighup_reloaded",
        reloaded=["keyring", "tls"],
        keyring=current.describe() if current else None,
        tls_cert=auth.tls.cert_file,
        tls_ca=auth.tls.ca_file,
        daemon_auth_mode=auth.daemon_mode,
        not_reloaded="settings (restart the sidecar for those)",
    )


async def run_sidecar(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully. Raises
    ConfigError when the state directory cannot be written."""
    check_state_dir(settings.state_path)
    fd_limit = raise_fd_limit()
    app = make_app(settings, clock=clock)
    guard = app[CONNECTIONS]
    fit_connections(guard, fd_limit)
    runner = SidecarRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        **server_options(settings),
    )
    try:
        await runner.setup()
    except BaseException:
        # Close what did start (the HTTP session, the state DB) before giving up.
        with suppress(Exception):
            await runner.cleanup()
        raise
    assert runner.server is not None
    guard.watch(runner.server)
    count_accept_errors(asyncio.get_running_loop(), guard)
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
        loop.add_signal_handler(signal.SIGHUP, reload_on_sighup, app)
        installed.append(signal.SIGHUP)
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            backlog=accept_backlog(fd_limit),
            ssl_context=app[keys.AUTH].tls.server_context(),
        )
        await site.start()
        identity = app[keys.IDENTITY]
        snapshot = app[keys.WATCHER].snapshot
        log.info(
            "sidecar_started",
            version=identity.sidecar_version,
            protocol=f"{identity.protocol.min}-{identity.protocol.max}",
            node_id=identity.node_id,
            state_dir=str(settings.state_path),
            daemon_healthy=snapshot.healthy,
            listen=f"{settings.host}:{settings.port}",
            url=identity.url,
            coordinator=identity.coordinator,
            coordinators=list(settings.coordinators),
            daemon=settings.daemon_url,
            auth=app[keys.AUTH].describe(),
            open_files_limit=fd_limit,
            max_connections=guard.max_total,
        )
        await stop.wait()
        log.info("sidecar_stopping", grace_s=settings.shutdown_timeout)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        log.info("sidecar_stopped")
