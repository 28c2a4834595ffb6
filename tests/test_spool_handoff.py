"""Hinted handoff end to end: remembers for an owner that is down (or whose daemon is
restarting) are answered 202, kept durably, replayed in order once the owner is back, and
never duplicated — even when the spooling sidecar restarts in the middle of a replay."""

from __future__ import annotations

from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, Node, registry_of, wait_for
from .routing_helpers import ALICE, BOB, client, daemon_requests, db_rows, set_faults, wait_routes


async def spool_depth(cluster: Cluster, node: Node) -> int:
    code, body, _ = await client(cluster, "GET", node.url + "/api/cluster/status?local=1")
    assert code == 200, body
    return int(body["local"]["spool"]["depth"])


def contents(node: Node, agent: str) -> list[str]:
    rows = db_rows(
        node,
        "SELECT content FROM memories WHERE agent_id = ? AND is_deleted = 0 ORDER BY created_at, rowid",
        (agent,),
    )
    return [r[0] for r in rows]


async def test_writes_for_a_down_owner_are_spooled_and_replayed_in_order(cluster: Cluster) -> None:
    """With b down, five remembers for bob sent to a are answered 202 (owner named, a key
    each) and stored nowhere yet; when b is back they land in b's database, in order, once
    each, and nowhere else; status shows the spool draining to zero."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"bob": ("unreachable", "b")})

    keys = []
    for i in range(5):
        code, body, _ = await client(
            cluster,
            "POST",
            a.url + "/api/memory/remember",
            {"content": f"Bob spooled note number {i}", "agentId": "bob"},
        )
        assert code == 202, body
        assert body["owner"]["node_id"] == "b" and body["agent"] == "bob"
        keys.append(body["idempotencyKey"])
    assert len(set(keys)) == 5
    assert await spool_depth(cluster, a) == 5
    assert contents(b, "bob") == [] and db_rows(a, "SELECT COUNT(*) FROM memories") == [(0,)]

    async def reported() -> bool:
        status = await cluster.status(a)
        node = next(n for n in status["nodes"] if n["node_id"] == "a")
        return (node.get("spool") or {}).get("depth") == 5

    await wait_for(reported, what="the spool depth in the cluster status")

    await cluster.start_sidecar(b)

    async def drained() -> bool:
        return await spool_depth(cluster, a) == 0

    await wait_for(drained, what="the spool to drain")
    assert contents(b, "bob") == [f"Bob spooled note number {i}" for i in range(5)]
    assert db_rows(a, "SELECT COUNT(*) FROM memories") == [(0,)]
    stored_keys = db_rows(
        b, "SELECT idempotency_key FROM memories WHERE agent_id = 'bob' ORDER BY created_at"
    )
    assert [r[0] for r in stored_keys] == keys


async def test_local_daemon_restart_is_covered_by_the_spool(cluster: Cluster) -> None:
    """While a node's own daemon is down, a remember for its agent is spooled there and
    written as soon as the daemon is back."""
    a = await cluster.add("a", [BOB], coordinator=True)
    await cluster.stop_daemon(a)
    code, body, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        {
            "content": "Written while the daemon restarts",
            "agentId": "bob",
            "idempotencyKey": "mine-1",
        },
    )
    assert code == 202 and body["idempotencyKey"] == "mine-1", body
    assert body["owner"]["node_id"] == "a"
    await cluster.start_daemon(a)
    # The test daemon comes back on a new port: point the sidecar at it.
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a, daemon_url=a.daemon_url)

    async def written() -> bool:
        done = contents(a, "bob") == ["Written while the daemon restarts"]
        return done and await spool_depth(cluster, a) == 0

    await wait_for(written, what="the spooled write to reach the daemon")


async def test_no_duplicate_after_a_restart_in_the_middle_of_a_replay(cluster: Cluster) -> None:
    """The spooling sidecar stops while the owner's daemon is still writing a replayed
    memory (so the entry is not yet marked done); after a restart the replay is sent again
    and the daemon's idempotency check keeps exactly one copy; later writes follow in order."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"bob": ("unreachable", "b")})
    for i in range(3):
        code, _, _ = await client(
            cluster,
            "POST",
            a.url + "/api/memory/remember",
            {"content": f"Replay safety note {i}", "agentId": "bob"},
        )
        assert code == 202

    # b's daemon now takes 1.5 s per request: the first replay will be in flight for a while.
    await set_faults(cluster, b, latency_ms=1500)
    await cluster.start_sidecar(b)

    async def first_replay_arrived() -> bool:
        requests = await daemon_requests(cluster, b)
        return any(
            r["path"] == "/api/memory/remember"
            and (r["body"] or {}).get("content") == "Replay safety note 0"
            for r in requests
        )

    await wait_for(first_replay_arrived, what="the first replay to reach b's daemon")
    await cluster.stop_sidecar(a)  # a goes away before it hears back
    await set_faults(cluster, b, latency_ms=0)

    async def first_written() -> bool:
        return contents(b, "bob")[:1] == ["Replay safety note 0"]

    await wait_for(first_written, what="b's daemon to finish the interrupted write")
    await cluster.start_sidecar(a, clock=clock)

    async def all_written() -> bool:
        return len(contents(b, "bob")) >= 3 and await spool_depth(cluster, a) == 0

    await wait_for(all_written, timeout=20, what="the replay to finish after the restart")
    assert contents(b, "bob") == [f"Replay safety note {i}" for i in range(3)]


async def test_full_spool_refuses_with_retry_after(cluster: Cluster) -> None:
    """Past spool_max_bytes a remember gets 503 with Retry-After and the owner named; the
    writes already accepted stay."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock, spool_max_bytes=300)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"bob": ("unreachable", "b")})
    code, _, _ = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": "fits", "agentId": "bob"}
    )
    assert code == 202
    code, body, headers = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": "x" * 400, "agentId": "bob"}
    )
    assert code == 503 and body["code"] == "spool_full" and int(headers["Retry-After"]) > 0
    assert body["owner"]["node_id"] == "b"
    assert await spool_depth(cluster, a) == 1
