"""Owner unreachable: a remember is spooled (202 with its idempotency key and the owner named,
see test_spool_handoff.py), other writes are refused with 503, Retry-After and the owner
named; reads answer 200 with the owner listed as missing. Nothing is dropped silently or
sent to another daemon."""

from __future__ import annotations

from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, registry_of
from .routing_helpers import ALICE, BOB, CAROL, client, db_rows, wait_routes


async def test_owner_down_in_the_registry(cluster: Cluster) -> None:
    """b's sidecar stops and the coordinator marks it down: carol's modify sent to a gets
    503 with Retry-After naming b, her remember is spooled with b named (nothing stored in
    a's daemon); carol's recall gets 200, no results, `partial: true`, carol missing and
    header 1/1; `partial=deny` makes it 503."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock)
    b = await cluster.add("b", [BOB, CAROL], coordinators=(a.url,))
    await wait_routes(cluster, a, {"carol": ("remote", "b")})
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"carol": ("unreachable", "b")})

    modify = {"patches": [{"id": "m1", "content": "y", "reason": "r"}], "agentId": "carol"}
    code, body, headers = await client(cluster, "POST", a.url + "/api/memory/modify", modify)
    assert code == 503 and body["code"] == "owner_unreachable", body
    assert body["owner"] == {"node_id": "b", "url": b.url, "state": "down"}
    assert int(headers["Retry-After"]) >= 1 and "b" in body["error"]
    code, body, headers = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": "lost?", "agentId": "carol"}
    )
    assert code == 202 and body["spooled"] is True, body
    assert body["owner"] == {"node_id": "b", "url": b.url, "state": "down"}
    assert db_rows(a, "SELECT COUNT(*) FROM memories") == [(0,)]

    code, body, headers = await client(
        cluster, "POST", a.url + "/api/memory/recall", {"query": "anything", "agentId": "carol"}
    )
    assert code == 200 and body["results"] == [] and body["query"] == "anything"
    cluster_block = body["cluster"]
    assert cluster_block["partial"] is True and cluster_block["missing_agents"] == ["carol"]
    assert [(n["node_id"], n["status"]) for n in cluster_block["nodes"]] == [("b", "down")]
    assert headers["x-signet-cluster-missing"] == "1/1"

    code, body, headers = await client(
        cluster,
        "POST",
        a.url + "/api/memory/recall",
        {"query": "anything", "agentId": "carol"},
        headers={"x-signet-cluster-partial": "deny"},
    )
    assert code == 503 and body["code"] == "partial_denied" and "Retry-After" in headers


async def test_owner_gone_before_the_registry_notices(cluster: Cluster) -> None:
    """b's sidecar is gone but still routed (within its TTL): a modify is refused with 503
    ('does not accept connections', so certainly not applied), a remember is spooled; the
    read is partial with b's status `error`."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock)
    b = await cluster.add("b", [CAROL], coordinators=(a.url,))
    await wait_routes(cluster, a, {"carol": ("remote", "b")})
    await cluster.stop_sidecar(b)
    modify = {"patches": [{"id": "m1", "content": "y", "reason": "r"}], "agentId": "carol"}
    code, body, headers = await client(cluster, "POST", a.url + "/api/memory/modify", modify)
    assert code == 503 and "does not accept connections" in body["error"], body
    assert "was not applied" in body["error"] and "Retry-After" in headers
    code, body, _ = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": "x", "agentId": "carol"}
    )
    assert code == 202 and body["owner"]["node_id"] == "b", body
    code, body, _ = await client(
        cluster, "POST", a.url + "/api/memory/recall", {"query": "x", "agentId": "carol"}
    )
    assert code == 200 and body["cluster"]["nodes"][0]["status"] == "error"
