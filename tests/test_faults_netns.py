"""Faults across real (namespaced) hosts under a stream of writes and reads: a daemon
killed, a sidecar killed, a node cut off the network and healed. Afterwards every
acknowledged write is in its owner's database exactly once and nowhere else, reads never
failed, routing came back within the TTL of healing, and every spool drained."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from signet_cluster.security.keyring import load_secret_file
from signet_cluster.security.signing import Signer

from .cluster_helpers import wait_for
from .netns_lab import LabNode, NetnsLab, netns_unavailable

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))

INTERVAL = 0.2
TTL = 5 * INTERVAL
AGENTS = {"alice": 0, "bob": 1, "carol": 2}  # agent -> index of its owner
ROSTERS = [[{"name": agent, "memory": {"read_policy": "shared"}}] for agent in AGENTS]


@attrs.define
class Client:
    """A trusted client on the host: signs its requests with the cluster key."""

    lab: NetnsLab
    session: aiohttp.ClientSession
    signer: Signer

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        target = URL(url)
        data = json.dumps(body).encode() if body is not None else b""
        host = target.host_port_subcomponent or ""
        headers = {"Host": host, "Content-Type": "application/json"}
        headers.update(self.signer.headers(method, host, target.raw_path_qs, data, headers))
        try:
            async with self.session.request(method, target, data=data, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, str(exc)


@attrs.define
class Traffic:
    acked: dict[str, str] = attrs.Factory(dict)  # content -> agent
    refused: list[tuple[int, Any]] = attrs.Factory(list)
    reads: list[int] = attrs.Factory(list)
    partial_reads: int = 0
    stop: asyncio.Event = attrs.Factory(asyncio.Event)


async def writer(client: Client, entry: LabNode, traffic: Traffic) -> None:
    i = 0
    while not traffic.stop.is_set():
        agent = list(AGENTS)[i % len(AGENTS)]
        content = f"fault stream write {i} for {agent}"
        code, body = await client.call(
            "POST", entry.url + "/api/memory/remember", {"content": content, "agentId": agent}
        )
        if code in (200, 202):
            traffic.acked[content] = agent
        else:
            traffic.refused.append((code, body))
        i += 1
        await asyncio.sleep(0.02)


async def reader(client: Client, entry: LabNode, traffic: Traffic) -> None:
    while not traffic.stop.is_set():
        code, body = await client.call(
            "POST",
            entry.url + "/api/memory/recall",
            {"query": "fault", "agentId": "alice", "limit": 5},
        )
        traffic.reads.append(code)
        if code == 200 and isinstance(body, dict) and (body.get("cluster") or {}).get("partial"):
            traffic.partial_reads += 1
        await asyncio.sleep(0.05)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[NetnsLab]:
    built = NetnsLab(
        tmp_path,
        heartbeat_interval=INTERVAL,
        sidecar_env={
            "SIGNET_CLUSTER_FORWARD_TIMEOUT": "1.0",
            "SIGNET_CLUSTER_PEER_TIMEOUT": "0.5",
            "SIGNET_CLUSTER_FANOUT_CEILING": "0.4",
        },
    )
    try:
        await built.setup(ROSTERS)
        await built.start()
        yield built
    finally:
        await built.teardown()


def rows(node: LabNode) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT content, agent_id FROM memories WHERE is_deleted = 0 AND content LIKE 'fault stream%'"
        ).fetchall()
    finally:
        conn.close()


async def test_no_acknowledged_write_is_lost_through_faults(lab: NetnsLab) -> None:
    """Kill n2's daemon, kill n3's sidecar, cut n2 off and heal it, all while a client
    writes for every agent and reads through n1: nothing acknowledged is lost or misplaced,
    reads are always 200 (partial while a node is away), routing recovers within a TTL of
    healing, and the spools drain."""
    n1, n2, n3 = lab.nodes
    keyring = load_secret_file(lab.secret_file)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        client = Client(lab, session, Signer(lambda: keyring, "cli", wall=time.time))

        async def routes() -> dict[str, str]:
            code, body = await client.call("GET", n1.url + "/api/cluster/routes")
            if code != 200:
                return {}
            return {r["agent_id"]: r["route"] for r in body["routes"]}

        async def all_routed() -> bool:
            r = await routes()
            return r.get("bob") == "remote" and r.get("carol") == "remote"

        await wait_for(all_routed, timeout=20, what="the cluster to form")
        traffic = Traffic()
        tasks = [
            asyncio.create_task(writer(client, n1, traffic)),
            asyncio.create_task(reader(client, n1, traffic)),
        ]
        try:
            await asyncio.sleep(1.0)
            # 1. n2's daemon dies and comes back: n2's sidecar keeps bob's writes meanwhile.
            await lab.kill_daemon(n2)
            await asyncio.sleep(2.0)
            await lab.start_daemon(n2)
            # 2. n3's sidecar dies and comes back: n1 keeps carol's writes meanwhile.
            await lab.kill_sidecar(n3)
            await asyncio.sleep(2.0)
            await lab.start_sidecar(n3)
            await lab.wait_http(n3.url + "/livez", n3)
            # 3. n2 is cut off the network, then healed.
            lab.cut(n2)
            await asyncio.sleep(2.0)
            lab.heal(n2)
            healed = time.monotonic()

            async def bob_routed() -> bool:
                return (await routes()).get("bob") == "remote"

            await wait_for(bob_routed, timeout=10, what="routing to n2 after healing")
            recovery = time.monotonic() - healed
            await asyncio.sleep(1.0)
        finally:
            traffic.stop.set()
            await asyncio.gather(*tasks)

        async def drained() -> bool:
            for node in lab.nodes:
                code, body = await client.call("GET", node.url + "/api/cluster/status?local=1")
                if code != 200 or (body["local"]["spool"] or {}).get("depth") != 0:
                    return False
            return True

        await wait_for(drained, timeout=30, what="every spool to drain")

    assert len(traffic.acked) > 50, "the stream wrote too little to mean anything"
    assert not [r for r in traffic.refused if r[0] >= 500 and r[0] not in (503, 504)], (
        traffic.refused
    )
    assert traffic.reads and set(traffic.reads) == {200}, sorted(set(traffic.reads))
    assert traffic.partial_reads > 0, "no read noticed a missing node"
    assert recovery <= TTL + 2 * INTERVAL, f"routing took {recovery:.2f}s to recover after healing"

    stored = {node.name: rows(node) for node in lab.nodes}
    owner_of = {agent: lab.nodes[index].name for agent, index in AGENTS.items()}
    for content, agent in traffic.acked.items():
        placements = [(name, a) for name, found in stored.items() for c, a in found if c == content]
        assert placements == [(owner_of[agent], agent)], (content, placements)
