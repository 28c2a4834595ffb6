"""Hinted handoff end to end: remembers for an owner that is down (or whose daemon is
restarting) are answered 202, kept durably, replayed in order once the owner is back, and
never duplicated — even when the spooling sidecar restarts in the middle of a replay."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from sidecar.memory.handoff import SPOOL
from signet_cluster.clock import ManualClock
from signet_cluster.security.keyring import generate_secret, new_key, save_keyring

from .cluster_helpers import Cluster, Node, registry_of, wait_for
from .routing_helpers import ALICE, BOB, client, daemon_requests, db_rows, set_faults, wait_routes


async def spool_depth(cluster: Cluster, node: Node) -> int:
    code, body, _ = await client(cluster, "GET", node.url + "/api/cluster/status?local=1")
    assert code == 200, body
    return int(body["local"]["spool"]["depth"])


async def owner_down(
    cluster: Cluster, *, b_settings: dict[str, Any] | None = None, **a_settings: Any
) -> tuple[Node, Node, ManualClock]:
    """Coordinator a (alice) and b (bob), then b's sidecar stopped and a's registry past
    its TTL: a now routes bob as unreachable (bob's writes go to a's spool)."""
    clock = ManualClock()
    a = await cluster.add("a", [ALICE], coordinator=True, clock=clock, **a_settings)
    b = await cluster.add("b", [BOB], coordinators=(a.url,), **(b_settings or {}))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"bob": ("unreachable", "b")})
    return a, b, clock


async def remember_bob(
    cluster: Cluster, node: Node, content: str, **extra: Any
) -> tuple[int, Any, dict[str, str]]:
    body = {"content": content, "agentId": "bob", **extra}
    return await client(cluster, "POST", node.url + "/api/memory/remember", body)


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
    a, b, _clock = await owner_down(cluster)

    keys = []
    for i in range(5):
        code, body, _ = await remember_bob(cluster, a, f"Bob spooled note number {i}")
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
    a, b, clock = await owner_down(cluster)
    for i in range(3):
        code, _, _ = await remember_bob(cluster, a, f"Replay safety note {i}")
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
    writes already accepted stay; /metrics tells the stored write from the refused one."""
    a, _b, _clock = await owner_down(cluster, spool_max_bytes=300)
    code, _, _ = await remember_bob(cluster, a, "fits")
    assert code == 202
    code, body, headers = await remember_bob(cluster, a, "x" * 400)
    assert code == 503 and body["code"] == "spool_full" and int(headers["Retry-After"]) > 0
    assert body["owner"]["node_id"] == "b"
    assert await spool_depth(cluster, a) == 1
    # /metrics counts the refused write as refused, not as spooled.
    code, text, _ = await client(cluster, "GET", a.url + "/metrics")
    counted = 'signet_cluster_proxied_requests_total{outcome="%s",route="remember",target="b"} 1.0'
    assert code == 200 and counted % "spooled" in text and counted % "refused" in text, text


def spool_rows(node: Node, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{node.state_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_remember_without_content_is_refused_not_spooled(cluster: Cluster) -> None:
    """While the owner is down, a remember the owner's daemon could never accept (no
    content) gets the daemon's own 400 at once instead of a 202 that could only end in the
    dead letters; nothing is spooled."""
    a, _b, _clock = await owner_down(cluster)
    for body in ({"agentId": "bob"}, {"agentId": "bob", "content": "   "}):
        code, answer, _ = await client(cluster, "POST", a.url + "/api/memory/remember", body)
        assert code == 400 and answer["error"] == "content is required", answer
    assert await spool_depth(cluster, a) == 0


async def test_a_spool_that_cannot_store_answers_503(cluster: Cluster) -> None:
    """When the spool's disk is full the write is not accepted, and the client is told so
    with a 503, Retry-After and the owner (not a 500); the sidecar keeps serving."""
    a, _b, _clock = await owner_down(cluster)
    spool = a.app[SPOOL]
    with spool._lock:  # the file may not grow: SQLite answers "database or disk is full"
        pages = spool._conn.execute("pragma page_count").fetchone()[0]
        spool._conn.execute(f"pragma max_page_count = {pages}")
    code, body, headers = await remember_bob(cluster, a, "x" * 20_000)
    assert code == 503 and body["code"] == "spool_unavailable", body
    assert int(headers["Retry-After"]) > 0 and body["owner"]["node_id"] == "b"
    assert await spool_depth(cluster, a) == 0


async def test_a_signature_the_owner_cannot_check_yet_keeps_the_write_spooled(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Mid key rotation a signs with a new key b has not installed yet: b's sidecar
    refuses the replay (401), which says nothing about the write, so it stays in a's spool
    (no dead letter) and reaches b once b has the key."""
    rotated = cluster.keyring.install(new_key(generate_secret(), "k2")).use("k2")
    a_keys = tmp_path / "a-keyring.json"
    save_keyring(a_keys, rotated)
    a, b, _clock = await owner_down(cluster, keyring_file=str(a_keys))
    code, _, _ = await remember_bob(cluster, a, "Mid rotation")
    assert code == 202
    await cluster.start_sidecar(b)

    async def refused_once() -> bool:
        errors = [r[0] or "" for r in spool_rows(a, "SELECT last_error FROM spool")]
        dead = spool_rows(a, "SELECT COUNT(*) FROM dead_letters")[0][0]
        return dead > 0 or any("unknown_key" in e for e in errors)

    await wait_for(refused_once, what="b to refuse a's replay")
    assert spool_rows(a, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert await spool_depth(cluster, a) == 1

    save_keyring(cluster.keyring_path, rotated)  # b re-reads its key file within a second

    async def delivered() -> bool:
        return contents(b, "bob") == ["Mid rotation"] and await spool_depth(cluster, a) == 0

    await wait_for(delivered, what="the replay once b has the new key")


async def test_one_entry_that_cannot_be_sent_does_not_stop_the_others(cluster: Cluster) -> None:
    """An entry whose replay fails in an unexpected way (here a stored header the HTTP
    client refuses) is kept with the error recorded on it, while other agents' writes are
    replayed as usual."""
    a, b, _clock = await owner_down(cluster)
    await asyncio.to_thread(
        a.app[SPOOL].add,
        owner="a",
        agent_id="zed",
        method="POST",
        path="/api/memory/remember",
        headers={"x-signet-actor": "bad\nvalue"},
        body=b'{"content": "never sendable"}',
        idempotency_key="poison",
    )
    code, _, _ = await remember_bob(cluster, a, "Good note")
    assert code == 202
    await cluster.start_sidecar(b)

    async def settled() -> bool:
        rows = spool_rows(a, "SELECT agent_id, attempts, last_error FROM spool")
        poison = [r for r in rows if r[0] == "zed"]
        recorded = bool(poison) and poison[0][1] > 0 and "ValueError" in (poison[0][2] or "")
        return recorded and contents(b, "bob") == ["Good note"] and len(rows) == 1

    await wait_for(settled, what="bob's write replayed and the failing entry recorded")
