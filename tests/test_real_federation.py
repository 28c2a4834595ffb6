"""Federation over the real Signet daemons (tests/real_signet.py's layout: node1 alice
isolated + bob shared, node2 carol + dave group ops, node3 erin shared + frank group ops,
all 0.145.7, node4 0.58.1 without agents), with in-process sidecars.

Writes land on their owner; every reader through every sidecar gets exactly the set the
read policies allow; a contributor whose daemon window is full of memories the reader may
not see still finds the ones it may (the starvation cases); a killed daemon is noticed by
the first request that fails.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from .cluster_helpers import Cluster, Node, wait_for
from .real_signet import LAYOUT, RealDaemon, needs_real_signet, real_cluster, real_daemons
from .routing_helpers import client

__all__ = ["real_daemons"]  # the fixture, used by name

pytestmark = needs_real_signet

NODE_OF = {agent: node for node, (_, roster) in LAYOUT.items() for agent, _ in roster}
POLICY = {
    agent: (
        (spec["read_policy"], None)
        if isinstance(spec["read_policy"], str)
        else ("group", spec["read_policy"]["group"])
    )
    for _, roster in LAYOUT.values()
    for agent, spec in roster
}
AGENTS = sorted(NODE_OF)
# Generous: these tests are about what comes back, not how fast (bench/fanout.py --real).
SETTINGS = {"fanout_ceiling": 10.0, "daemon_timeout": 10.0, "peer_timeout": 5.0}


async def formed(cluster: Cluster, daemons: dict[str, RealDaemon]) -> dict[str, Node]:
    nodes = await real_cluster(cluster, daemons, **SETTINGS)

    async def routed() -> bool:
        for node in nodes.values():
            status, body = await cluster.get(node.url + "/api/cluster/routes")
            if status != 200 or set(AGENTS) - {r["agent_id"] for r in body["routes"]}:
                return False
        return True

    await wait_for(routed, timeout=30, what="every agent routed on every node")
    return nodes


async def remember(cluster: Cluster, url: str, content: str, **body: Any) -> str:
    code, answer, _ = await client(
        cluster, "POST", url + "/api/memory/remember", {"content": content, **body}
    )
    assert code == 200, answer
    return str(answer["id"])


async def recall(cluster: Cluster, url: str, body: dict[str, Any]) -> dict[str, Any]:
    code, answer, _ = await client(cluster, "POST", url + "/api/memory/recall", body)
    assert code == 200, answer
    assert isinstance(answer, dict)
    return answer


def stored(daemon: RealDaemon, memory_id: str) -> tuple[str | None, str | None] | None:
    """(agent_id, visibility) of a memory in this daemon's database, None when absent."""
    db = daemon.workspace / "memory" / "memories.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(memories)")}
        if "agent_id" not in columns:
            found = conn.execute("SELECT 1 FROM memories WHERE id = ?", (memory_id,)).fetchone()
            return ("default", "global") if found else None
        row = conn.execute(
            "SELECT agent_id, visibility FROM memories WHERE id = ?", (memory_id,)
        ).fetchone()
    return None if row is None else (row[0], row[1])


def allowed(reader: str, memories: dict[str, tuple[str, str, str]]) -> set[str]:
    """The oracle: what `reader` may see of `memories` (id -> node, agent, visibility). The
    owner's daemon applies its own rule to its own database (a shared reader sees every
    global memory there); other nodes contribute the global memories of their agents the
    reader's policy reaches (never an isolated agent's)."""
    policy, group = POLICY[reader]
    home = NODE_OF[reader]
    out = set()
    for memory_id, (node, agent, visibility) in memories.items():
        if agent == reader:
            out.add(memory_id)
            continue
        if policy == "isolated" or visibility != "global":
            continue
        agent_policy, agent_group = POLICY.get(agent, ("shared", None))  # default: shared
        if policy == "shared":
            if node == home or agent_policy != "isolated":
                out.add(memory_id)
        elif agent_policy == "group" and agent_group == group:
            out.add(memory_id)
    return out


async def test_writes_land_on_the_owner_and_every_reader_gets_exactly_what_policy_allows(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    nodes = await formed(cluster, real_daemons)
    token = "q" + uuid.uuid4().hex[:12]
    names = sorted(nodes)
    memories: dict[str, tuple[str, str, str]] = {}
    for index, agent in enumerate(AGENTS):
        # Through a sidecar that is not the owner's: the write is routed.
        entry = nodes[next(n for n in names[index % 4 :] + names if n != NODE_OF[agent])]
        for visibility in ("global", "private"):
            memory_id = await remember(
                cluster,
                entry.url,
                f"{token} {agent} {visibility} note",
                agentId=agent,
                visibility=visibility,
            )
            memories[memory_id] = (NODE_OF[agent], agent, visibility)
    for name, node in nodes.items():  # the node-local `default` agent of each node
        memory_id = await remember(cluster, node.url, f"{token} default note on {name}")
        memories[memory_id] = (name, "default", "global")

    for memory_id, (home, agent, visibility) in memories.items():
        for name, daemon in real_daemons.items():
            found = stored(daemon, memory_id)
            if name != home:
                assert found is None, (memory_id, agent, name)
            elif daemon.flavor == "ts":
                assert found == (agent, visibility), (memory_id, found)
            else:
                assert found is not None

    for reader in AGENTS:
        want = allowed(reader, memories)
        for name, node in nodes.items():
            answer = await recall(
                cluster, node.url, {"query": token, "agentId": reader, "limit": 50}
            )
            got = {hit["id"] for hit in answer["results"]}
            assert got == want, (reader, name, sorted(got ^ want), answer.get("cluster"))
            block = answer.get("cluster")
            assert block is None or block["partial"] is False, (reader, name, block)


async def test_a_shared_reader_is_not_starved_by_an_isolated_agents_memories(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    """30 matching global memories of isolated alice on node1 fill its daemon's window (20
    candidates whatever the limit); erin (shared, node3) still gets bob's matching global
    memory from node1, every time, through every sidecar, with the default limit."""
    nodes = await formed(cluster, real_daemons)
    token = "s" + uuid.uuid4().hex[:12]
    for n in range(30):
        # The token three times: alice's memories rank above bob's.
        await remember(
            cluster, nodes["node1"].url, f"{token} {token} {token} alice {n}", agentId="alice"
        )
    bobs = await remember(cluster, nodes["node1"].url, f"{token} bob's deploy", agentId="bob")
    for _ in range(3):
        for name, node in nodes.items():
            answer = await recall(cluster, node.url, {"query": token, "agentId": "erin"})
            got = [hit["id"] for hit in answer["results"]]
            assert got == [bobs], (name, answer.get("cluster"))
            assert answer["cluster"]["partial"] is False


async def test_a_group_reader_is_read_as_a_member_of_its_group(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    """On node3, 25 matching global memories of erin (shared) would fill a window read as
    a shared agent; carol (group ops, node2) gets frank's (ops, node3) global memory because
    node3 reads as frank, a member of ops."""
    nodes = await formed(cluster, real_daemons)
    token = "g" + uuid.uuid4().hex[:12]
    for n in range(25):
        await remember(
            cluster, nodes["node3"].url, f"{token} {token} {token} erin {n}", agentId="erin"
        )
    franks = await remember(cluster, nodes["node3"].url, f"{token} frank's", agentId="frank")
    for name, node in nodes.items():
        answer = await recall(cluster, node.url, {"query": token, "agentId": "carol"})
        assert [hit["id"] for hit in answer["results"]] == [franks], name
        node3 = next(n for n in answer["cluster"]["nodes"] if n["node_id"] == "node3")
        assert node3["status"] == "ok" and "note" not in node3


async def test_a_killed_daemon_is_noticed_by_the_first_request_that_fails(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    """SIGKILL node3's daemon: the next request served there fails, which alone makes node3
    not ready and its daemon unhealthy in the coordinator's status (the heartbeat goes at
    once); federated reads then report node3 without asking it. (Last in this module: the
    daemon stays dead.)"""
    nodes = await formed(cluster, real_daemons)
    node3 = nodes["node3"]
    code, _ = await cluster.get(node3.url + "/readyz")
    assert code == 200
    real_daemons["node3"].kill()
    code, answer, _ = await client(
        cluster, "POST", node3.url + "/api/memory/recall", {"query": "x", "agentId": "erin"}
    )
    # A federated read degrades: 200 with the owner's leg failed (node3 is erin's owner).
    assert code == 200 and answer["cluster"]["partial"] is True, answer
    owner = next(n for n in answer["cluster"]["nodes"] if n["role"] == "owner")
    assert owner["node_id"] == "node3" and owner["status"] == "error", owner
    code, ready = await cluster.get(node3.url + "/readyz")
    assert code == 503 and "daemon" in ready["reason"], ready

    async def unhealthy_in_status() -> bool:
        _, status = await cluster.get(nodes["node1"].url + "/api/cluster/status")
        entry = next(n for n in status["nodes"] if n["node_id"] == "node3")
        return entry["daemon"]["healthy"] is False

    await wait_for(unhealthy_in_status, timeout=10, what="node3's daemon unhealthy in status")
    answer = await recall(cluster, nodes["node1"].url, {"query": "x", "agentId": "bob"})
    leg = next(n for n in answer["cluster"]["nodes"] if n["node_id"] == "node3")
    assert leg["status"] == "down" and "unhealthy" in leg["error"], leg
