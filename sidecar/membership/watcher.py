"""Keeps a fresh reading of the local daemon (health, flavor, roster) on a timer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web

from sidecar import keys
from signet_cluster.daemon.probe import DaemonAdapter, DaemonSnapshot

log = structlog.get_logger("signet_cluster.watcher")


class DaemonWatcher:
    def __init__(self, adapter: DaemonAdapter, interval: float) -> None:
        self.adapter = adapter
        self.interval = interval
        self.snapshot = DaemonSnapshot()
        self.checked = False
        self.changed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def refresh(self) -> DaemonSnapshot:
        async with self._lock:
            new = await self.adapter.probe(self.snapshot if self.checked else None)
            first = not self.checked
            old, self.snapshot, self.checked = self.snapshot, new, True
            if first or (old.healthy, old.flavor, old.version) != (
                new.healthy,
                new.flavor,
                new.version,
            ):
                # The first reading is always logged (a daemon unreachable at start is said
                # at once); a daemon that is or becomes unhealthy needs an operator: warning.
                event = log.info if new.healthy else log.warning
                event(
                    "daemon_state",
                    healthy=new.healthy,
                    flavor=new.flavor,
                    version=new.version,
                    error=new.error,
                    url=self.adapter.base_url if not new.healthy else None,
                )
            if old.agents != new.agents:
                log.info("daemon_roster", agents=[a.id for a in new.agents])
                self.changed.set()
            return new

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("daemon_probe_failed")
            # Poll faster while the daemon is unhealthy so recovery shows up quickly.
            delay = self.interval if self.snapshot.healthy else min(self.interval, 1.0)
            await asyncio.sleep(delay)


async def watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    adapter = DaemonAdapter(
        app[keys.HTTP], settings.daemon_url, settings.workspace_path, settings.daemon_timeout
    )
    watcher = DaemonWatcher(adapter, settings.roster_refresh)
    app[keys.WATCHER] = watcher
    await watcher.refresh()
    task = asyncio.create_task(watcher.run(), name="daemon-watcher")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
