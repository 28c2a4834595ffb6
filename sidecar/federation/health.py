"""What this sidecar knows about the other nodes as contributors to its federated reads:
their circuit breakers (`signet_cluster.breaker`), their learned latencies and budgets
(`signet_cluster.latency`), and the contributions still running after a read stopped
waiting for them (they finish in the background, so a slow node's answer still teaches its
latency and a late answer is never counted as a failure).

`federation_ctx` creates the state, keeps peer connections warm (a read must never come back
partial because the connection to a peer was not open yet) and, on shutdown, cancels what is
still running. `peer_health` is the per-node summary shown by status; `FederationCollector`
exports it to /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import suppress
from typing import Any

import attrs
import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sidecar import keys
from sidecar.memory.routing import current_view
from signet_cluster.breaker import Breakers
from signet_cluster.errors import PeerUnreachable
from signet_cluster.latency import Latencies

log = structlog.get_logger("signet_cluster.federation")

# Below the peer pool's keep-alive (30 s), so an idle pool keeps one open connection per peer.
WARM_INTERVAL = 10.0


@attrs.define
class FederationState:
    breakers: Breakers
    latencies: Latencies = attrs.Factory(Latencies)
    background: set[asyncio.Task[Any]] = attrs.Factory(set)
    instances: dict[str, str] = attrs.Factory(dict)  # node id -> sidecar instance learned from

    def restarted(self, node_id: str, instance_id: str) -> None:
        """A node's sidecar started again: what was learned of it is stale (a fresh process
        and a cold connection are slower), so it gets the ceiling until it is known again."""
        if self.instances.get(node_id, instance_id) != instance_id:
            self.latencies.forget(node_id)
        self.instances[node_id] = instance_id

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task this state keeps (and cancels at shutdown) even after nobody awaits it."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def budget(self, node_id: str, settings: Any) -> float:
        return self.latencies.budget(
            node_id,
            ceiling=settings.fanout_ceiling,
            headroom=settings.fanout_headroom,
            grace=settings.fanout_grace,
        )


def peer_health(app: web.Application) -> dict[str, dict[str, Any]]:
    """Per contributing node: breaker state, failures, last error, learned p99 and budget."""
    state = app[keys.FEDERATION]
    settings = app[keys.SETTINGS]
    now = app[keys.CLOCK].monotonic()
    out: dict[str, dict[str, Any]] = {}
    for node_id in sorted(set(state.breakers.nodes) | set(state.latencies.nodes)):
        high = state.latencies.high(node_id)
        out[node_id] = state.breakers.summary(node_id, now) | {
            "p99_ms": None if high is None else round(high * 1000, 3),
            "budget_ms": round(state.budget(node_id, settings) * 1000, 3),
        }
    return out


class FederationCollector:
    """Per contributing node, read at scrape time: breaker open, times opened, learned p99,
    budget. Node ids are the only label values (bounded by the cluster's size)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        families = self._families()
        open_f, opened_f, p99_f, budget_f = families
        if keys.FEDERATION in self.app:
            for node_id, health in peer_health(self.app).items():
                open_f.add_metric([node_id], 0.0 if health["breaker"] == "closed" else 1.0)
                opened_f.add_metric([node_id], float(health["opened"]))
                if health["p99_ms"] is not None:
                    p99_f.add_metric([node_id], health["p99_ms"] / 1000)
                budget_f.add_metric([node_id], health["budget_ms"] / 1000)
        return list(families)

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        prefix = "signet_cluster_fanout"
        return (
            GaugeMetricFamily(
                f"{prefix}_breaker_open",
                "1 while a contributing node's circuit breaker is open or half-open (skipped).",
                labels=("node_id",),
            ),
            CounterMetricFamily(
                f"{prefix}_breaker_opened",
                "Times a contributing node's circuit breaker opened (failures, not slowness).",
                labels=("node_id",),
            ),
            GaugeMetricFamily(
                f"{prefix}_node_p99_seconds",
                "A contributing node's learned p99 contribution latency.",
                labels=("node_id",),
            ),
            GaugeMetricFamily(
                f"{prefix}_node_budget_seconds",
                "How long a federated read waits for a contributing node (before the owner's "
                "own time is considered).",
                labels=("node_id",),
            ),
        )


async def _warm(app: web.Application) -> None:
    """One cheap request to every alive peer, so the pool holds a connection to each."""
    view = current_view(app)
    if view is None:
        return
    me = app[keys.IDENTITY].node_id
    peers = [p for p in view.peers if p.node_id != me and p.state == "alive"]

    async def touch(url: str) -> None:
        with suppress(PeerUnreachable):
            await app[keys.PEERS].call(
                "GET", url, "/livez", timeout=app[keys.SETTINGS].peer_timeout
            )

    await asyncio.gather(*(touch(p.url) for p in peers))


async def _warm_loop(app: web.Application) -> None:
    while True:
        try:
            await _warm(app)
        except Exception:
            log.exception("warm_peers_failed")
        await asyncio.sleep(WARM_INTERVAL)


async def federation_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    state = FederationState(
        breakers=Breakers(threshold=settings.breaker_failures, cooldown=settings.breaker_cooldown)
    )
    app[keys.FEDERATION] = state
    collector = FederationCollector(app)
    app[keys.METRICS].registry.register(collector)
    warm = asyncio.create_task(_warm_loop(app), name="warm-peers")
    yield
    app[keys.METRICS].registry.unregister(collector)
    tasks = [warm, *state.background]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
