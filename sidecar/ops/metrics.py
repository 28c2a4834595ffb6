"""Prometheus metrics for one sidecar (`GET /metrics`).

Each app owns its own `CollectorRegistry` (never prometheus-client's global one), so several
sidecars in one process (tests, the benchmark) keep separate counts. Two kinds of families:

- events, counted where they happen: `app[keys.METRICS].proxied.labels(route=..., target=...,
  outcome=...).inc()`, `.heartbeats_sent`, `.fanout_partial`, ... (attributes of `Metrics`);
- state, read from the app at scrape time by `ClusterCollector` (peers by state, routing table
  size and age, collisions, coordinator contact age, build info, spool), so a scrape never
  shows a stale copy and nothing has to keep gauges in sync.

Label values are bounded: routes and outcomes are fixed words, targets are node ids (or
`local`), coordinators are the few configured URLs.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import attrs
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from sidecar import keys
from sidecar.memory.handoff import SPOOL
from sidecar.security.limits import CONNECTIONS
from signet_cluster.protocol import PEER_STATES, PeerView
from signet_cluster.registry import RegistryEvent

PREFIX = "signet_cluster"
# Counters and histograms without their `_created` series: a timestamp per label set that
# doubles the series count and no dashboard uses (prometheus-client's process-wide switch).
disable_created_metrics()  # type: ignore[no-untyped-call]
# Loopback hops take well under a millisecond, LAN fan-out tens of ms, timeouts seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# (depth, age of the oldest entry in seconds or None when empty), read before each scrape;
# async so the spool's owner can ask its SQLite file from a worker thread.
SpoolProbe = Callable[[], Awaitable[tuple[int, float | None]]]

routes = web.RouteTableDef()


@attrs.define(kw_only=True)
class Metrics:
    """The event families of one sidecar, registered in its own registry."""

    registry: CollectorRegistry
    heartbeats_sent: Counter
    heartbeats_failed: Counter
    heartbeat_seconds: Histogram
    heartbeats_received: Counter
    peer_events: Counter
    proxied: Counter
    proxied_seconds: Histogram
    fanout: Counter
    fanout_partial: Counter
    fanout_seconds: Histogram
    requests_refused: Counter
    # Set by whoever owns the write spool; without one the spool families are not exported.
    spool_probe: SpoolProbe | None = None
    spool_state: tuple[int, float | None] | None = None
    # The labelled children of `proxied` and `proxied_seconds`, looked up once per label
    # set: `labels()` costs more than the count itself on the memory path.
    _proxied_children: dict[tuple[str, str, str], tuple[Any, Any]] = attrs.field(
        factory=dict, init=False, repr=False
    )

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry(auto_describe=False)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                f"{PREFIX}_{name}", doc, labels, registry=registry, buckets=LATENCY_BUCKETS
            )

        return cls(
            registry=registry,
            heartbeats_sent=counter(
                "heartbeats_sent", "Heartbeats sent to a coordinator.", ("coordinator",)
            ),
            heartbeats_failed=counter(
                "heartbeats_failed",
                "Heartbeats that got no usable answer, by coordinator and reason "
                "(unreachable, protocol_mismatch, removed, rejected, bad_reply).",
                ("coordinator", "reason"),
            ),
            heartbeat_seconds=histogram(
                "heartbeat_duration_seconds",
                "Round trip of a heartbeat to a coordinator (answered ones).",
                ("coordinator",),
            ),
            heartbeats_received=counter(
                "heartbeats_received",
                "Heartbeats this coordinator received, by outcome (accepted or the error code).",
                ("outcome",),
            ),
            peer_events=counter(
                "peer_events",
                "Registry changes: joined_cluster, went_down, came_back, reaped, roster_changed.",
                ("kind",),
            ),
            proxied=counter(
                "proxied_requests",
                "Memory API requests routed by this sidecar, by route, target node "
                "(or local) and outcome.",
                ("route", "target", "outcome"),
            ),
            proxied_seconds=histogram(
                "proxied_request_duration_seconds",
                "Time to answer a routed memory API request, by route and target node.",
                ("route", "target"),
            ),
            fanout=counter(
                "fanout_requests",
                "Federated reads, by outcome (complete, partial, refused).",
                ("outcome",),
            ),
            fanout_partial=counter(
                "fanout_partial_responses",
                "Nodes missing from a federated read, by cause (down, timeout, error, skipped).",
                ("cause",),
            ),
            fanout_seconds=histogram(
                "fanout_duration_seconds", "Time to answer a federated read.", ()
            ),
            requests_refused=counter(
                "requests_refused",
                "Requests refused before any handler ran (401/403), by reason "
                "(unsigned, bad_signature, expired, replayed, wrong_node, no_keyring, ...).",
                ("reason",),
            ),
        )

    def observe_proxied(self, route: str, target: str, outcome: str, seconds: float) -> None:
        """One routed request: count it and record its latency."""
        key = (route, target, outcome)
        children = self._proxied_children.get(key)
        if children is None:
            children = (
                self.proxied.labels(route=route, target=target, outcome=outcome),
                self.proxied_seconds.labels(route=route, target=target),
            )
            self._proxied_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_events(self, events: Iterable[RegistryEvent]) -> None:
        for event in events:
            self.peer_events.labels(kind=event.kind).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class ClusterCollector:
    """State families, computed from the app at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> Iterator[Metric]:
        # Names only: the registry refuses a second collector exporting the same names.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        if keys.IDENTITY in self.app and keys.WATCHER in self.app:
            self._fill(families)
        yield from families
        yield from exhaustion_families(self.app)
        spool = self.app[keys.METRICS].spool_state
        if spool is not None:
            depth, oldest = spool
            yield GaugeMetricFamily(
                f"{PREFIX}_spool_depth", "Writes waiting in the spool for their owner.", depth
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_spool_oldest_age_seconds",
                "Age of the oldest spooled write (0 when the spool is empty).",
                oldest or 0.0,
            )

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                f"{PREFIX}_build_info",
                "This sidecar's version and protocol range, and its daemon's flavor and version.",
                labels=(
                    "node_id",
                    "sidecar_version",
                    "protocol_min",
                    "protocol_max",
                    "daemon_flavor",
                    "daemon_version",
                    "python_version",
                ),
            ),
            GaugeMetricFamily(
                f"{PREFIX}_daemon_healthy", "1 when the local daemon answers healthy."
            ),
            GaugeMetricFamily(f"{PREFIX}_coordinator", "1 when this sidecar is a coordinator."),
            GaugeMetricFamily(
                f"{PREFIX}_peers",
                "Nodes in the registry (or its copy) by state.",
                labels=("state",),
            ),
            GaugeMetricFamily(
                f"{PREFIX}_nodes_by_version",
                "Alive nodes by sidecar and daemon version (more than one series: mixed versions).",
                labels=("sidecar_version", "daemon_flavor", "daemon_version"),
            ),
            GaugeMetricFamily(
                f"{PREFIX}_routing_table_size", "Agents with a route to an alive owner."
            ),
            GaugeMetricFamily(
                f"{PREFIX}_routing_table_age_seconds",
                "Age of the routing table this sidecar routes from (0 on a coordinator; "
                "+Inf before any coordinator answered).",
            ),
            GaugeMetricFamily(
                f"{PREFIX}_agent_collisions", "Agents claimed by more than one node."
            ),
            GaugeMetricFamily(
                f"{PREFIX}_coordinator_contact_age_seconds",
                "Seconds since a coordinator last answered a heartbeat (+Inf: never).",
                labels=("coordinator",),
            ),
        ]

    def _fill(self, families: list[GaugeMetricFamily]) -> None:
        app = self.app
        (
            build,
            healthy,
            coordinator,
            peers_f,
            versions_f,
            routes_f,
            age_f,
            collisions_f,
            contact_f,
        ) = families
        identity = app[keys.IDENTITY]
        snapshot = app[keys.WATCHER].snapshot
        build.add_metric(
            [
                identity.node_id,
                identity.sidecar_version,
                str(identity.protocol.min),
                str(identity.protocol.max),
                snapshot.flavor,
                snapshot.version or "",
                platform.python_version(),
            ],
            1.0,
        )
        healthy.add_metric([], 1.0 if snapshot.healthy else 0.0)
        coordinator.add_metric([], 1.0 if identity.coordinator else 0.0)

        peers, n_routes, n_collisions, age = cluster_snapshot(app)
        for state in PEER_STATES:
            peers_f.add_metric([state], float(sum(1 for p in peers if p.state == state)))
        versions: dict[tuple[str, str, str], int] = {}
        for peer in peers:
            if peer.alive:
                key = (peer.sidecar_version or "", peer.daemon.flavor, peer.daemon.version or "")
                versions[key] = versions.get(key, 0) + 1
        for key, count in sorted(versions.items()):
            versions_f.add_metric(list(key), float(count))
        routes_f.add_metric([], float(n_routes))
        collisions_f.add_metric([], float(n_collisions))
        age_f.add_metric([], age)

        membership = app[keys.MEMBERSHIP]
        now = app[keys.CLOCK].monotonic()
        for url in membership.targets():
            if url == membership.self_url:
                continue
            last_ok = membership.contact(url).last_ok
            contact_f.add_metric([url], math.inf if last_ok is None else max(0.0, now - last_ok))


# -- exhaustion (issue 13): connections, file descriptors, the spool's disk -----------------
def exhaustion_families(app: web.Application) -> Iterator[Metric]:
    guard = app.get(CONNECTIONS)
    if guard is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_open_connections", "Client connections open now.", guard.open
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_max_connections",
            "Connections served normally (max_connections, fitted to the descriptor limit).",
            guard.max_total,
        )
        shed = CounterMetricFamily(
            f"{PREFIX}_connections_shed",
            "Connections over a limit: answered 503 (over_limit), or closed before they "
            "sent a request to make room for a newer one (dropped).",
            labels=("how",),
        )
        shed.add_metric(["over_limit"], guard.shed_requests)
        shed.add_metric(["dropped"], guard.dropped)
        yield shed
        yield CounterMetricFamily(
            f"{PREFIX}_accept_errors",
            "Connections the listener could not accept (out of file descriptors).",
            guard.accept_errors,
        )
    spool = app.get(SPOOL)
    if spool is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_spool_disk_full",
            "1 while the disk holding the write spool is full (new spooled writes get 503).",
            1.0 if spool.disk_full is not None else 0.0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_spool_damaged_files",
            "Damaged spool files moved aside since start (see the spool_damaged log line).",
            spool.damage_count,
        )


def cluster_snapshot(app: web.Application) -> tuple[list[PeerView], int, int, float]:
    """(peers, routes, collisions, table age) from the registry on a coordinator, else from
    the latest copy a coordinator sent (a standalone sidecar knows only itself)."""
    if app[keys.IDENTITY].coordinator:
        registry = app[keys.REGISTRY]
        routes_, collisions = registry.routing()
        return registry.peers(), len(routes_), len(collisions), 0.0
    view = app[keys.MEMBERSHIP].latest()
    if view is None:
        alive = PeerView(
            node_id=app[keys.IDENTITY].node_id,
            url=app[keys.IDENTITY].url,
            state="alive",
            joined=False,
            coordinator=False,
            protocol=app[keys.IDENTITY].protocol.max,
            sidecar_version=app[keys.IDENTITY].sidecar_version,
            instance_id=app[keys.IDENTITY].instance_id,
            daemon=app[keys.WATCHER].snapshot.info(),
            agents=app[keys.WATCHER].snapshot.agents,
            last_seen_age_s=0.0,
        )
        return [alive], 0, 0, math.inf
    age = max(0.0, app[keys.CLOCK].monotonic() - view.received_at)
    return list(view.peers), len(view.routes), len(view.collisions), age


def install(app: web.Application) -> Metrics:
    """Create the app's metrics and register the scrape-time collectors (called by make_app)."""
    from sidecar.ops import state_metrics  # it reads /readyz's verdict: imported late

    metrics = Metrics.create()
    app[keys.METRICS] = metrics
    metrics.registry.register(ClusterCollector(app))
    state_metrics.register(app, metrics.registry)
    app.add_routes(routes)
    return metrics


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[keys.METRICS]
    if metrics.spool_probe is not None:
        metrics.spool_state = await metrics.spool_probe()
    body, content_type = metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
