"""The etcd backend on a three-member etcd: when the member a sidecar uses goes silent (a
partition sends no reset), its calls and its watch move to a live member in time."""

from __future__ import annotations

from structlog.testing import capture_logs

from .cluster_helpers import Cluster, wait_for
from .etcd_helpers import (
    ALICE,
    BOB,
    CAROL,
    EtcdCluster,
    backend,
    etcd_cluster,  # noqa: F401  (fixture)
    etcd_settings_for,
    wait_view,
)


async def test_the_watch_follows_the_calls_off_a_frozen_member(
    cluster: Cluster,
    etcd_cluster: EtcdCluster,  # noqa: F811
) -> None:
    """Three etcd members; the one a sidecar's calls and watch use freezes (its sockets stay
    open and silent, as behind a partition). The calls fail over to another member, and the
    watch follows them instead of waiting forever on the silent stream: a node that joins
    afterwards still reaches the sidecar's routing table."""
    frozen = await etcd_cluster.follower()
    endpoints = (frozen.url, *(u for u in etcd_cluster.urls if u != frozen.url))
    settings = {**etcd_settings_for(endpoints), "peer_timeout": 0.3}
    a = await cluster.add("a", ALICE, **settings)
    await cluster.add("b", BOB, **settings)
    await wait_view(cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    assert backend(a).client.endpoint == frozen.url and backend(a).watch_connected
    frozen.freeze()
    await cluster.add("c", CAROL, **settings)
    await wait_view(
        cluster,
        a,
        {"a": "alive", "b": "alive", "c": "alive"},
        {"alice": "a", "bob": "b", "carol": "c"},
    )
    assert backend(a).client.endpoint != frozen.url


async def test_failing_over_to_another_member_keeps_the_lease(
    cluster: Cluster,
    etcd_cluster: EtcdCluster,  # noqa: F811
) -> None:
    """`peer_timeout` is also the timeout of heartbeats and admin calls, so it may well be
    longer than the etcd lease (here 2.5 s against 2 s). A frozen first member must still
    cost no lease: each etcd call gives a member only a share of the lease, so the renewal
    reaches a live member in time. No node is seen down, no lease is lost."""
    frozen = await etcd_cluster.follower()
    endpoints = (frozen.url, *(u for u in etcd_cluster.urls if u != frozen.url))
    settings = {**etcd_settings_for(endpoints), "heartbeat_interval": 0.5, "peer_timeout": 2.5}
    a = await cluster.add("a", ALICE, **settings)
    b = await cluster.add("b", BOB, **settings)
    await wait_view(cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    leases = {n.name: backend(n).lease for n in (a, b)}
    with capture_logs() as logs:
        frozen.freeze()
        since = backend(a).clock.monotonic()

        async def failed_over() -> bool:
            # Both moved off the frozen member and renewed for longer than a lease since.
            return all(
                backend(n).client.endpoint != frozen.url and (backend(n).last_ok or 0) > since + 3
                for n in (a, b)
            )

        await wait_for(failed_over, timeout=20, what="both sidecars to renew elsewhere")
    assert {n.name: backend(n).lease for n in (a, b)} == leases
    events = [e["event"] for e in logs]
    assert "etcd_lease_lost" not in events and "peer_expired" not in events
