"""`/metrics` families for day-2 operations: process and platform, no `_created` series,
readiness and failsafe, spool bytes and dead letters, refusals by reason, breakers, TLS
certificate expiry."""

from __future__ import annotations

import time
from pathlib import Path

import trustme

from sidecar import keys
from sidecar.ops.state_metrics import certificate_not_after

from .cluster_helpers import Cluster
from .test_metrics import scrape, value

BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]


async def test_process_and_state_families(cluster: Cluster) -> None:
    a = await cluster.add("a", BOB, coordinator=True)
    await cluster.wait_states(a, {"a": "alive"})
    code, _, _ = await cluster.request("POST", a.url + "/api/cluster/heartbeat", signed=False)
    assert code == 401
    assert cluster.session is not None
    async with cluster.session.get(a.url + "/metrics") as resp:
        text = await resp.text()
    assert "_created" not in text
    m = await scrape(cluster, a)
    assert (value(m, "process_resident_memory_bytes") or 0) > 1_000_000
    assert (value(m, "process_open_fds") or 0) > 0
    assert value(m, "process_cpu_seconds_total") is not None
    assert abs((value(m, "process_start_time_seconds") or 0) - time.time()) < 3600
    assert any(name == "python_info" for name, _ in m)
    assert value(m, "signet_cluster_ready") == 1.0
    assert value(m, "signet_cluster_failsafe") == 0.0
    assert value(m, "signet_cluster_requests_refused_total", reason="unsigned") == 1.0
    assert value(m, "signet_cluster_heartbeats_refused_now", reason="unauthorized:unsigned") == 1.0
    assert value(m, "signet_cluster_spool_bytes") == 0.0
    assert value(m, "signet_cluster_spool_dead_letters") == 0.0
    # A node whose fan-out calls keep failing: its breaker shows open.
    breakers = a.app[keys.FEDERATION].breakers
    now = a.app[keys.CLOCK].monotonic()
    for _ in range(breakers.threshold):
        breakers.record("gone", ok=False, now=now)
    m = await scrape(cluster, a)
    assert value(m, "signet_cluster_breaker_state", node_id="gone", state="open") == 1.0
    assert value(m, "signet_cluster_breaker_state", node_id="gone", state="closed") == 0.0


async def test_an_unhealthy_daemon_reads_not_ready(cluster: Cluster) -> None:
    a = await cluster.add("a", [], start_daemon=False)
    m = await scrape(cluster, a)
    assert value(m, "signet_cluster_ready") == 0.0


def test_certificate_expiry_is_read_from_the_file(tmp_path: Path) -> None:
    """The notAfter of the configured certificate, as Unix time; a missing file is None."""
    ca = trustme.CA()
    cert = ca.issue_cert("node.example")
    path = tmp_path / "node.crt"
    cert.cert_chain_pems[0].write_to_path(str(path))
    cache: dict[str, tuple[float, float]] = {}
    not_after = certificate_not_after(str(path), cache)
    assert not_after is not None and not_after > time.time() + 86400
    assert certificate_not_after(str(tmp_path / "missing.crt"), cache) is None
