"""Keeps a fresh reading of the local daemon: a quick `/health` check every
`daemon_health_interval`, the full reading (flavor, roster) every `roster_refresh` and
whenever health changes. A failed request to the daemon from anywhere in the sidecar is
evidence at once (`daemon_failed`): the snapshot turns unhealthy and the heartbeat goes out
immediately, so status, /readyz and /metrics show a dead daemon within about a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import aiohttp
import attrs
import structlog
from aiohttp import web

from sidecar import keys
from signet_cluster.daemon.probe import DaemonAdapter, DaemonSnapshot

log = structlog.get_logger("signet_cluster.watcher")


class DaemonWatcher:
    def __init__(
        self, adapter: DaemonAdapter, interval: float, health_interval: float | None = None
    ) -> None:
        self.adapter = adapter
        self.interval = interval
        self.health_interval = min(interval, health_interval or interval)
        self.snapshot = DaemonSnapshot()
        self.checked = False
        # Set on a roster or health change: the heartbeat loop sends at once.
        self.changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def _publish(self, new: DaemonSnapshot) -> None:
        first = not self.checked
        old, self.snapshot, self.checked = self.snapshot, new, True
        if first or (old.healthy, old.flavor, old.version) != (
            new.healthy,
            new.flavor,
            new.version,
        ):
            # The first reading is always logged (a daemon unreachable at start is said at
            # once); a daemon that is or becomes unhealthy needs an operator: warning.
            event = log.info if new.healthy else log.warning
            event(
                "daemon_state",
                healthy=new.healthy,
                flavor=new.flavor,
                version=new.version,
                error=new.error,
                url=self.adapter.base_url if not new.healthy else None,
            )
            if old.healthy != new.healthy:
                self.changed.set()
        if old.agents != new.agents:
            log.info("daemon_roster", agents=[a.id for a in new.agents])
            self.changed.set()

    async def refresh(self) -> DaemonSnapshot:
        async with self._lock:
            new = await self.adapter.probe(self.snapshot if self.checked else None)
            self._publish(new)
            return new

    def daemon_failed(self, error: str) -> None:
        """A request to the daemon got no answer (refused, reset): unhealthy now, and the
        watcher re-checks at once (so a daemon that comes back shows up quickly too)."""
        if self.snapshot.healthy:
            self._publish(attrs.evolve(self.snapshot, healthy=False, error=error))
        self._wake.set()

    async def _healthy_now(self) -> tuple[bool, str | None]:
        """The quick check: does /health answer `healthy`?"""
        try:
            status, body = await self.adapter.health(timeout=max(1.0, 3 * self.health_interval))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return False, f"daemon unreachable: {exc or type(exc).__name__}"
        if status != 200 or not isinstance(body, dict):
            return False, f"daemon /health answered {status}"
        if body.get("status") != "healthy":
            return False, f"daemon status {body.get('status')!r}"
        return True, None

    async def run(self) -> None:
        last_full = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_full >= self.interval:
                    await self.refresh()
                    last_full = time.monotonic()
                else:
                    healthy, error = await self._healthy_now()
                    if healthy != self.snapshot.healthy:
                        if healthy:
                            await self.refresh()  # back: read flavor and roster again
                            last_full = time.monotonic()
                        else:
                            self._publish(attrs.evolve(self.snapshot, healthy=False, error=error))
            except Exception:
                log.exception("daemon_probe_failed")
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.health_interval)


async def watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    adapter = DaemonAdapter(
        app[keys.HTTP], settings.daemon_url, settings.workspace_path, settings.daemon_timeout
    )
    watcher = DaemonWatcher(adapter, settings.roster_refresh, settings.daemon_health_interval)
    app[keys.WATCHER] = watcher
    await watcher.refresh()
    task = asyncio.create_task(watcher.run(), name="daemon-watcher")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
