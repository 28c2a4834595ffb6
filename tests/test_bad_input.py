"""Bad input: size limits, readable 400s, tolerated unknown fields, slow and oversized
requests bounded, garbage on the port; and a refused request changes nothing at all."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

from sidecar import keys

from .cluster_helpers import Cluster, Node, registry_of, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
JSON = {"Content-Type": "application/json"}


def heartbeat(node_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "protocol": {"min": 1, "max": 1},
        "node_id": node_id,
        "instance_id": "i-" + node_id,
        "url": "http://127.0.0.1:1",
        "sidecar_version": "9.0.0",
        "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
        "agents": [],
        "seq": 1,
        "sent_at": time.time(),
        **extra,
    }


async def raw_exchange(node: Node, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and return whatever comes back before EOF."""
    assert node.settings is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", node.settings.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()
        await writer.wait_closed()


async def alive(cluster: Cluster, node: Node) -> bool:
    code, _ = await cluster.get(node.url + "/livez", signed=False)
    return code == 200


async def test_body_limits_for_cluster_messages_and_uploads(cluster: Cluster) -> None:
    """A cluster message over max_body_bytes is 413 (with or without Content-Length); a
    pass-through upload may be larger, up to max_upload_bytes, then 413 too."""
    a = await cluster.add("a", ALICE, coordinator=True, max_body_bytes=2048, max_upload_bytes=8192)
    big = json.dumps(heartbeat("a", padding="x" * 3000)).encode()
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/cluster/heartbeat", data=big, headers=JSON
    )
    assert code == 413 and body["code"] == "body_too_large" and "2048" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    assert cluster.session is not None
    async with cluster.session.post(
        a.url + "/api/cluster/heartbeat", data=chunks(), headers=JSON
    ) as resp:
        assert resp.status == 413 and (await resp.json())["code"] == "body_too_large"
    upload = b"y" * 6000
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/documents", data=upload, headers=JSON, signed=False
    )
    assert code != 413, body
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/documents", data=upload * 2, headers=JSON, signed=False
    )
    assert code == 413


async def test_every_problem_is_listed_and_unknown_fields_are_tolerated(cluster: Cluster) -> None:
    """A bad admin body gets one 400 listing each problem by field; a heartbeat from a newer
    peer with fields this version does not know is accepted."""
    a = await cluster.add("a", ALICE, coordinator=True)
    code, body = await cluster.post(a.url + "/api/cluster/adopt", {"agent_id": 5, "node_id": 7})
    assert code == 400
    assert any("body.agent_id" in p for p in body["details"])
    assert any("body.node_id" in p for p in body["details"])
    code, body = await cluster.post(a.url + "/api/cluster/join", [1, 2])
    assert code == 400 and "must be a JSON object" in body["error"]
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/cluster/join", data=b"{nope", headers=JSON
    )
    assert code == 400 and "not valid JSON" in body["error"]
    newer = heartbeat(
        "n2", future_field={"x": 1}, daemon={"flavor": "ts", "healthy": True, "gpu": 1}
    )
    code, body, _ = await cluster.request(
        "POST",
        a.url + "/api/cluster/heartbeat",
        data=json.dumps(newer).encode(),
        headers=JSON,
        signer=cluster.signer_for("n2"),
    )
    assert code == 200, body
    assert registry_of(a).record("n2") is not None


def snapshot(node: Node) -> list[str]:
    """Every row of the sidecar's state DB, as SQL text."""
    db = sqlite3.connect(f"file:{node.state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        return [line for line in db.iterdump() if "sqlite_sequence" not in line]
    finally:
        db.close()


def memory_rows(node: Node) -> list[tuple[Any, ...]]:
    """The daemon's memories (read-only), as the daemon stores them."""
    db = sqlite3.connect(f"file:{node.workspace / 'memory' / 'memories.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT * FROM memories ORDER BY id").fetchall()
    finally:
        db.close()


async def test_refused_requests_change_nothing(cluster: Cluster) -> None:
    """A barrage of refused requests (bad JSON, invalid fields, unsigned, replayed, stale,
    wrong node, oversized, garbage bytes; a memory write the daemon refuses) leaves the
    registry, the state DB and the daemon's memories exactly as they were."""
    a = await cluster.add("a", ALICE, coordinator=True, max_body_bytes=4096)
    b = await cluster.add("b", [])
    await wait_for(lambda: alive(cluster, a), what="a up")
    registry = registry_of(a)
    await cluster.stop_sidecar(b)  # b's heartbeats would legitimately change nothing either
    before = (registry.version, snapshot(a))
    memories = memory_rows(a)
    join = json.dumps({"address": b.url}).encode()
    replay = cluster.signer.headers("POST", a.url.split("//")[1], "/api/cluster/join", b"{}", JSON)
    attempts: list[tuple[int, Any, Any]] = [
        await cluster.request("POST", a.url + "/api/cluster/join", data=b"{x", headers=JSON),
        await cluster.request(
            "POST", a.url + "/api/cluster/adopt", data=b'{"agent_id": 5}', headers=JSON
        ),
        await cluster.request(
            "POST", a.url + "/api/cluster/join", data=join, headers=JSON, signed=False
        ),
        await cluster.request(
            "POST",
            a.url + "/api/cluster/heartbeat",
            data=json.dumps(
                heartbeat("zz", agents=[{"id": "alice", "read_policy": "shared"}])
            ).encode(),
            headers=JSON,
            signer=cluster.signer_for("b"),
        ),
        await cluster.request(
            "POST",
            a.url + "/api/cluster/heartbeat",
            data=json.dumps(heartbeat("zz", padding="p" * 5000)).encode(),
            headers=JSON,
            signer=cluster.signer_for("zz"),
        ),
        await cluster.request(
            "POST", a.url + "/api/memory/remember", data=b'{"content": 1}', headers=JSON
        ),
        await cluster.request(
            "POST",
            a.url + "/api/cluster/join",
            data=b"{}",
            headers={**JSON, **replay},
            signed=False,
        ),
        await cluster.request(
            "POST",
            a.url + "/api/cluster/join",
            data=b"{}",
            headers={**JSON, **replay},
            signed=False,
        ),
    ]
    assert [code // 100 for code, _, _ in attempts] == [4] * len(attempts), attempts
    garbage = await raw_exchange(a, os.urandom(2048) + b"\r\n\r\n")
    assert garbage == b"" or garbage.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    assert await alive(cluster, a)
    assert (registry.version, snapshot(a)) == before
    assert memory_rows(a) == memories


async def test_oversized_headers_and_garbage_do_not_hurt_the_process(cluster: Cluster) -> None:
    """A header or request line over max_header_bytes is answered 4xx, random bytes get a
    400 or a closed connection, and the sidecar keeps serving."""
    a = await cluster.add("a", ALICE, coordinator=True, max_header_bytes=2048)
    answer = await raw_exchange(
        a, b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.") and b" 4" in answer[:12], answer[:80]
    answer = await raw_exchange(a, b"GET /" + b"b" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.") and b" 4" in answer[:12], answer[:80]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    answer = await raw_exchange(a, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.") and b" 4" in answer[:12], answer[:80]
    for seed in range(20):
        junk = bytes((seed * 37 + i * 101) % 256 for i in range(1024))
        answer = await raw_exchange(a, junk + b"\r\n\r\n")
        assert answer == b"" or (answer.startswith(b"HTTP/1.") and b" 4" in answer[:12]), answer[
            :80
        ]
    assert await alive(cluster, a)


async def test_slow_loris_and_slow_bodies_are_cut_off(cluster: Cluster) -> None:
    """A client that trickles its headers is disconnected after idle_timeout; one that
    trickles a cluster message body gets 408 after body_timeout; the sidecar serves others
    meanwhile."""
    a = await cluster.add("a", ALICE, coordinator=True, idle_timeout=0.5, body_timeout=0.5)
    assert a.settings is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", a.settings.port)
    writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
    started = asyncio.get_running_loop().time()
    closed = False
    try:
        for i in range(100):  # at most 10 s of trickling
            try:
                writer.write(b"X-Slow-%d: a\r\n" % i)
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                continue
            closed = data == b"" or data.startswith(b"HTTP/1.1 408")
            break
    finally:
        writer.close()
    assert closed, "the trickling client was never cut off"
    assert asyncio.get_running_loop().time() - started < 9
    assert await alive(cluster, a)

    answer = await raw_exchange(
        a,
        b"POST /api/cluster/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"node',
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert await alive(cluster, a)
    assert a.app[keys.AUTH].refused == 0
