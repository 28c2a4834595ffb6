"""The agent API, knowledge expand and recover through sidecars over the real Signet
daemons (three 0.145.7 and one 0.58.1, tests/real_signet.py)."""

from __future__ import annotations

import uuid
from typing import Any

from .cluster_helpers import Cluster, Node, wait_for
from .real_signet import LAYOUT, RealDaemon, needs_real_signet, real_cluster, real_daemons
from .routing_helpers import client

__all__ = ["real_daemons"]  # the fixture, used by name

pytestmark = needs_real_signet

AGENTS = sorted({a for _, roster in LAYOUT.values() for a, _ in roster})
FANOUT = {"fanout_ceiling": 4.0, "forward_timeout": 10.0}


async def _formed(cluster: Cluster, daemons: dict[str, RealDaemon]) -> dict[str, Node]:
    nodes = await real_cluster(cluster, daemons, **FANOUT)

    async def routed() -> bool:
        for node in nodes.values():
            status, body = await cluster.get(node.url + "/api/cluster/routes")
            if status != 200 or not set(AGENTS) <= {r["agent_id"] for r in body["routes"]}:
                return False
            code, roster, _ = await client(cluster, "GET", node.url + "/api/agents")
            if code != 200 or len(roster["cluster"]["nodes"]) != len(nodes):
                return False
        return True

    await wait_for(routed, timeout=20, what="every agent routed at every node")
    return nodes


async def _rows(cluster: Cluster, url: str) -> dict[str, dict[str, Any]]:
    code, body, _ = await client(cluster, "GET", url + "/api/agents")
    assert code == 200, body
    return {row["id"]: row for row in body["agents"]}


async def test_roster_info_create_and_delete_over_real_daemons(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    nodes = await _formed(cluster, real_daemons)
    owner = {a: n for n, (_, roster) in LAYOUT.items() for a, _ in roster}
    daemon_rows = {n: await _rows(cluster, d.url) for n, d in real_daemons.items() if n != "node4"}
    # The roster at any sidecar, the legacy node's included: every agent, in the daemon's
    # rows and order, each with its node; `default` is the asking node's.
    for name in ("node3", "node4"):
        code, body, _ = await client(cluster, "GET", nodes[name].url + "/api/agents")
        assert code == 200, body
        assert [r["name"] for r in body["agents"]] == sorted([*AGENTS, "default"])
        for row in body["agents"]:
            node = owner.get(row["id"], name)
            assert row["cluster"]["node_id"] == node and row["cluster"]["state"] == "alive"
            if row["id"] != "default":
                assert {k: v for k, v in row.items() if k != "cluster"} == (
                    daemon_rows[node][row["id"]]
                )
    # Info of a remote agent, at a node that does not hold it (and at the legacy one).
    for name in ("node3", "node4"):
        code, body, headers = await client(cluster, "GET", nodes[name].url + "/api/agents/bob")
        assert code == 200, body
        assert body == daemon_rows["node1"]["bob"] | {
            "cluster": {"node_id": "node1", "state": "alive"}
        }
        assert headers["x-signet-cluster-served-by"] == "node1"
        code, body, _ = await client(cluster, "GET", nodes[name].url + "/api/agents/nobody")
        assert (code, body) == (404, {"error": "Agent not found"})
    # A create of a name node1 holds is refused at node2, whose daemon never sees it.
    code, body, _ = await client(
        cluster, "POST", nodes["node2"].url + "/api/agents", {"name": "bob"}
    )
    assert code == 409 and body["code"] == "agent_exists_elsewhere", body
    assert "bob" not in await _rows(cluster, real_daemons["node2"].url)
    # A new name is created at node2, then deleted through node3 (at its owner, node2).
    fresh = "zed" + uuid.uuid4().hex[:6]
    code, body, _ = await client(
        cluster, "POST", nodes["node2"].url + "/api/agents", {"name": fresh}
    )
    assert code == 201 and body["id"] == fresh, body
    assert fresh in await _rows(cluster, real_daemons["node2"].url)

    async def routed_fresh() -> bool:
        code, body, _ = await client(cluster, "GET", nodes["node3"].url + "/api/agents/" + fresh)
        return code == 200 and body["cluster"]["node_id"] == "node2"

    await wait_for(routed_fresh, timeout=15, what=f"{fresh} routed to node2")
    code, body, _ = await client(cluster, "DELETE", nodes["node3"].url + "/api/agents/" + fresh)
    assert (code, body) == (200, {"success": True, "purged": False})
    assert fresh not in await _rows(cluster, real_daemons["node2"].url)


def _about(entity: str, content: str, **extra: Any) -> dict[str, Any]:
    aspect = {"entityName": entity, "aspect": "ops", "attributes": [{"content": content}]}
    return {"content": content, "structured": {"aspects": [aspect]}, **extra}


async def test_expand_through_another_node_never_returns_a_private_memory(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    """The real 0.145.7 expands as `default` whatever the body names, private memories
    included: an expand naming bob (node1) through node3 used to be answered by node1's
    daemon as node1's `default`. Now it is node3's `default` plus what the other nodes may
    contribute, and node1's private memory stays on node1."""
    nodes = await _formed(cluster, real_daemons)
    entity = "Vault" + uuid.uuid4().hex[:8]
    saved = {}
    for key, url, body in [
        (
            "private",
            real_daemons["node1"].url,
            _about(entity, "vault key is 1234", visibility="private"),
        ),
        ("global", real_daemons["node1"].url, _about(entity, "vault runs on node one")),
        ("node3", real_daemons["node3"].url, _about(entity, "vault backups on node three")),
    ]:
        code, answer, _ = await client(cluster, "POST", url + "/api/memory/remember", body)
        assert code == 200 and answer["entities_linked"] >= 1, answer
        saved[key] = answer["id"]
    # The daemon itself: the body's agent is ignored and the private memory is listed.
    for ask in ({"entity": entity}, {"entity": entity, "agentId": "bob"}):
        code, answer, _ = await client(
            cluster, "POST", real_daemons["node1"].url + "/api/knowledge/expand", ask
        )
        assert code == 200, answer
        assert {m["id"] for m in answer["memories"]} == {saved["private"], saved["global"]}
    for agent in ("bob", "alice", "erin", None):
        ask: dict[str, Any] = {"entity": entity}
        if agent is not None:
            ask["agentId"] = agent
        code, answer, headers = await client(
            cluster, "POST", nodes["node3"].url + "/api/knowledge/expand", ask
        )
        assert code == 200, (agent, answer)
        found = {m["id"] for m in answer["memories"]}
        assert saved["private"] not in found, agent
        assert found == {saved["global"], saved["node3"]}, agent
        assert headers["x-signet-cluster-served-by"] == "node3"


async def test_recover_is_routed_and_ownership_checked_on_real_daemons(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    """bob's deleted memory (node1): alice, on the same node, may not recover it (0.145.7
    would); bob, through node3, may."""
    nodes = await _formed(cluster, real_daemons)
    code, answer, _ = await client(
        cluster,
        "POST",
        nodes["node3"].url + "/api/memory/remember",
        {"content": f"bob recover {uuid.uuid4().hex}", "agentId": "bob"},
    )
    assert code == 200, answer
    mem_id = answer["id"]
    code, answer, _ = await client(
        cluster, "DELETE", f"{nodes['node3'].url}/api/memory/{mem_id}?reason=t&agentId=bob"
    )
    assert code == 200, answer
    code, answer, _ = await client(
        cluster,
        "POST",
        f"{nodes['node1'].url}/api/memory/{mem_id}/recover?agentId=alice",
        {"reason": "not hers"},
    )
    assert code == 403 and answer["code"] == "not_agent_owner", answer
    code, answer, headers = await client(
        cluster,
        "POST",
        f"{nodes['node3'].url}/api/memory/{mem_id}/recover?agentId=bob",
        {"reason": "his"},
    )
    assert code == 200 and answer["status"] == "recovered", answer
    assert headers["x-signet-cluster-served-by"] == "node1"
