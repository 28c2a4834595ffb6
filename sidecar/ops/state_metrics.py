"""Scrape-time metrics an operator alerts on beyond the cluster view (sidecar.ops.metrics):
readiness and failsafe, the spool's bytes and dead letters, heartbeats refused now, circuit
breakers, the TLS certificate's expiry and etcd's health. Read from the app at each scrape,
like ClusterCollector; process and platform families come from prometheus-client's own
collectors, registered beside this one."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from sidecar import keys
from sidecar.etcd.backend import ETCD
from sidecar.membership.refusals import REFUSALS
from sidecar.ops.health import readiness

PREFIX = "signet_cluster"
BREAKER_STATES = ("closed", "half-open", "open")


def certificate_not_after(path: str, cache: dict[str, tuple[float, float]]) -> float | None:
    """The certificate's notAfter as Unix time, cached by file mtime (it is re-read after a
    renewal); None when the file cannot be read."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    cached = cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        # The standard library's only certificate parser (no extra dependency for one date).
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        not_after = float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except (OSError, ValueError, KeyError, ssl.SSLError):
        return None
    cache[path] = (mtime, not_after)
    return not_after


class StateCollector:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.certificates: dict[str, tuple[float, float]] = {}

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        return [
            gauge("ready", "1 when /readyz answers ready (the reason is in /readyz)."),
            gauge(
                "failsafe",
                "1 while no coordinator answers and this sidecar routes from its last table, "
                "probing peers itself.",
            ),
            gauge("spool_bytes", "Bytes of the writes waiting in the spool."),
            gauge("spool_dead_letters", "Spooled writes their owner refused for good."),
            gauge(
                "heartbeats_refused_now",
                "Senders whose heartbeats this coordinator refused in the last two minutes, "
                "by reason.",
                ("reason",),
            ),
            gauge(
                "breaker_state",
                "Fan-out circuit breaker per node: 1 for its current state.",
                ("node_id", "state"),
            ),
            gauge(
                "tls_certificate_expiry_timestamp_seconds",
                "When this sidecar's TLS certificate expires (Unix time).",
            ),
            gauge("etcd_up", "1 when etcd answers (etcd backend only)."),
        ]

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        if keys.IDENTITY in self.app and keys.WATCHER in self.app:
            self._fill(families)
        yield from families

    def _fill(self, families: list[GaugeMetricFamily]) -> None:
        app = self.app
        ready, failsafe, spool_bytes, dead, refused, breakers, tls, etcd_up = families
        ready.add_metric([], 1.0 if readiness(app)[0] else 0.0)
        failsafe.add_metric([], 1.0 if app[keys.MEMBERSHIP].direct else 0.0)
        summary = keys.current_summary(app)
        if summary is not None:
            spool_bytes.add_metric([], float(summary.bytes))
            dead.add_metric([], float(summary.dead_letters))
        by_reason: dict[str, int] = {}
        for refusal in app[REFUSALS].summary():
            reason = str(refusal["reason"])
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for reason, count in sorted(by_reason.items()):
            refused.add_metric([reason], float(count))
        if keys.FEDERATION in app:
            now = app[keys.CLOCK].monotonic()
            state = app[keys.FEDERATION].breakers
            for node_id in sorted(state.nodes):
                current = state.state(node_id, now)
                for name in BREAKER_STATES:
                    breakers.add_metric([node_id, name], 1.0 if name == current else 0.0)
        cert = app[keys.SETTINGS].tls_cert_file
        if cert:
            not_after = certificate_not_after(cert, self.certificates)
            if not_after is not None:
                tls.add_metric([], not_after)
        if ETCD in app:
            etcd_up.add_metric([], 1.0 if app[ETCD].summary().get("ok") else 0.0)


def register(app: web.Application, registry: CollectorRegistry) -> None:
    """This collector, and the process (RSS, fds, CPU, start time) and platform families."""
    registry.register(StateCollector(app))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
