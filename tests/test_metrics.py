"""`/metrics` on real sidecars: the Prometheus families an operator alerts on."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from sidecar import keys
from signet_cluster.clock import ManualClock
from signet_cluster.protocol import PROTOCOL_MAX, ProtocolRange

from .cluster_helpers import Cluster, Node, free_port, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]


async def scrape(
    cluster: Cluster, node: Node
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the node's /metrics, keyed by (name, labels)."""
    assert cluster.session is not None
    async with cluster.session.get(node.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_heartbeat_registry_and_build_families(cluster: Cluster) -> None:
    """A coordinator and a member export heartbeats sent/received with latency, peers by state,
    routing table size, contact age and build info; each sidecar counts only its own events
    (separate registries in one process)."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,), flavor="rust")
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})

    async def member_has_table() -> bool:
        m = await scrape(cluster, b)
        return value(m, "signet_cluster_routing_table_size") == 2.0

    await wait_for(member_has_table, what="member's routing table in /metrics")
    ma, mb = await scrape(cluster, a), await scrape(cluster, b)

    sent = value(mb, "signet_cluster_heartbeats_sent_total", coordinator=a.url)
    assert sent is not None and sent >= 1
    assert (
        value(mb, "signet_cluster_heartbeat_duration_seconds_count", coordinator=a.url) or 0
    ) >= 1
    accepted = value(ma, "signet_cluster_heartbeats_received_total", outcome="accepted")
    assert accepted is not None and accepted >= 1
    # The coordinator sends no heartbeat over HTTP; the member receives none.
    assert not any(name == "signet_cluster_heartbeats_sent_total" for name, _ in ma)
    assert not any(name == "signet_cluster_heartbeats_received_total" for name, _ in mb)

    for m in (ma, mb):
        assert value(m, "signet_cluster_peers", state="alive") == 2.0
        assert value(m, "signet_cluster_peers", state="down") == 0.0
        assert value(m, "signet_cluster_routing_table_size") == 2.0  # alice, bob
        assert value(m, "signet_cluster_agent_collisions") == 0.0
        assert value(m, "signet_cluster_daemon_healthy") == 1.0
    assert value(ma, "signet_cluster_coordinator") == 1.0
    assert value(mb, "signet_cluster_coordinator") == 0.0
    assert value(ma, "signet_cluster_routing_table_age_seconds") == 0.0
    age = value(mb, "signet_cluster_coordinator_contact_age_seconds", coordinator=a.url)
    assert age is not None and 0 <= age < 5
    assert value(ma, "signet_cluster_peer_events_total", kind="joined_cluster") == 2.0

    build = [k for k in mb if k[0] == "signet_cluster_build_info"]
    assert len(build) == 1
    labels = dict(build[0][1])
    assert labels["node_id"] == "b" and labels["daemon_flavor"] == "rust"
    assert labels["daemon_version"] == "0.145.7" and labels["sidecar_version"]
    # Both nodes run the same versions: one series, not a mix.
    versions = [k for k in ma if k[0] == "signet_cluster_nodes_by_version"]
    assert len(versions) == 2  # ts and rust daemons differ in flavor
    assert sum(ma[k] for k in versions) == 2.0


async def test_node_going_down_shows_in_peers_and_events(cluster: Cluster) -> None:
    """A silent member, once the coordinator's clock passes the TTL, moves from alive to
    down in `peers`, leaves the routing table, and is counted as a went_down event."""
    clock = ManualClock()
    a = await cluster.add("a", ALICE, coordinator=True, clock=clock)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    await cluster.stop_sidecar(b)
    clock.advance(a.settings.ttl + 0.5)  # type: ignore[union-attr]
    # The coordinator's own entry may expire for an instant too, until its next heartbeat.
    await cluster.wait_states(a, {"b": "down", "a": "alive"})
    m = await scrape(cluster, a)
    assert value(m, "signet_cluster_peers", state="alive") == 1.0
    assert value(m, "signet_cluster_peers", state="down") == 1.0
    assert value(m, "signet_cluster_routing_table_size") == 1.0
    assert (value(m, "signet_cluster_peer_events_total", kind="went_down") or 0) >= 1


async def test_failed_heartbeats_by_reason(cluster: Cluster) -> None:
    """An unreachable coordinator counts `unreachable` failures and an infinite contact age;
    a protocol refusal is counted on both sides (member: failed, coordinator: received with
    the error code)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    lonely = await cluster.add("lonely", [], coordinators=(nowhere,))

    async def failed() -> bool:
        m = await scrape(cluster, lonely)
        return (
            value(
                m,
                "signet_cluster_heartbeats_failed_total",
                coordinator=nowhere,
                reason="unreachable",
            )
            or 0
        ) >= 1

    await wait_for(failed, what="an unreachable heartbeat counted")
    m = await scrape(cluster, lonely)
    assert (
        value(m, "signet_cluster_coordinator_contact_age_seconds", coordinator=nowhere) == math.inf
    )
    assert value(m, "signet_cluster_routing_table_age_seconds") == math.inf

    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    b.app[keys.IDENTITY].protocol = ProtocolRange(min=PROTOCOL_MAX + 1, max=PROTOCOL_MAX + 2)

    async def refused() -> bool:
        mb, ma = await scrape(cluster, b), await scrape(cluster, a)
        return (
            value(
                mb,
                "signet_cluster_heartbeats_failed_total",
                coordinator=a.url,
                reason="protocol_mismatch",
            )
            or 0
        ) >= 1 and (
            value(ma, "signet_cluster_heartbeats_received_total", outcome="protocol_mismatch") or 0
        ) >= 1

    await wait_for(refused, what="a protocol refusal counted on both sides")


async def test_collisions_and_spool_probe(cluster: Cluster) -> None:
    """Two nodes claiming one agent show as a collision; the spool families report the
    spool through its probe: empty at first, then whatever the probe says."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", ALICE, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    m = await scrape(cluster, a)
    assert value(m, "signet_cluster_agent_collisions") == 1.0
    assert value(m, "signet_cluster_routing_table_size") == 1.0
    assert value(m, "signet_cluster_spool_depth") == 0.0

    async def probe() -> tuple[int, float | None]:
        return 3, 12.5

    b.app[keys.METRICS].spool_probe = probe
    m = await scrape(cluster, b)
    assert value(m, "signet_cluster_spool_depth") == 3.0
    assert value(m, "signet_cluster_spool_oldest_age_seconds") == 12.5


async def test_routed_request_helpers_and_openmetrics(cluster: Cluster) -> None:
    """`observe_proxied` counts a routed request with its latency bucketed, and a scraper
    asking for OpenMetrics gets that format."""
    a = await cluster.add("a", ALICE, coordinator=True)
    metrics = a.app[keys.METRICS]
    metrics.observe_proxied("recall", "b", "ok", 0.003)
    metrics.fanout_partial.labels(cause="timeout").inc()
    m = await scrape(cluster, a)
    assert (
        value(m, "signet_cluster_proxied_requests_total", route="recall", target="b", outcome="ok")
        == 1.0
    )
    assert (
        value(
            m,
            "signet_cluster_proxied_request_duration_seconds_bucket",
            route="recall",
            target="b",
            le="0.0025",
        )
        == 0.0
    )
    assert (
        value(
            m,
            "signet_cluster_proxied_request_duration_seconds_bucket",
            route="recall",
            target="b",
            le="0.005",
        )
        == 1.0
    )
    assert value(m, "signet_cluster_fanout_partial_responses_total", cause="timeout") == 1.0
    assert cluster.session is not None
    async with cluster.session.get(
        a.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")


async def test_routed_memory_requests_are_counted(cluster: Cluster) -> None:
    """A recall through the sidecar is counted by route, target and outcome, with its latency."""
    a = await cluster.add("a", ALICE, coordinator=True)
    code, _body = await cluster.post(
        a.url + "/api/memory/recall", {"query": "anything", "agentId": "alice"}
    )
    assert code == 200
    m = await scrape(cluster, a)
    counted = {
        dict(labels)["outcome"]: v
        for (name, labels), v in m.items()
        if name == "signet_cluster_proxied_requests_total"
        and dict(labels).get("route") == "recall"
        and dict(labels).get("target") == "local"
    }
    assert counted == {"ok": 1.0}
    count = value(
        m, "signet_cluster_proxied_request_duration_seconds_count", route="recall", target="local"
    )
    assert count == 1.0
