"""`POST /api/memory/{id}/recover` (undo a soft delete) on the dev daemon, and through the
sidecar: routed to the owner like PATCH/DELETE by id, and refused for another agent's memory
(TS recovers any id without an agent check)."""

from __future__ import annotations

import pytest

from .cluster_helpers import Cluster
from .routing_helpers import client, db_rows, remember, two_nodes


async def _deleted(cluster: Cluster, url: str, agent: str | None) -> str:
    mem_id = await remember(cluster, url, f"to be recovered ({agent})", agent)
    query = f"?reason=test&agentId={agent}" if agent else "?reason=test"
    code, body, _ = await client(cluster, "DELETE", f"{url}/api/memory/{mem_id}{query}")
    assert code == 200, body
    return mem_id


@pytest.mark.parametrize("flavor", ["ts", "ts-legacy", "rust"])
async def test_the_dev_daemon_recovers_a_soft_deleted_memory(cluster: Cluster, flavor: str) -> None:
    """The TS answers: recovered (with versions and the retention window), then 409 not
    deleted; 404 for an unknown id; 400 without a reason."""
    a = await cluster.add("a", [], coordinator=True, flavor=flavor)
    mem_id = await _deleted(cluster, a.daemon_url, None)
    url = f"{a.daemon_url}/api/memory/{mem_id}/recover"
    code, body, _ = await client(cluster, "POST", url, {"reason": "oops"})
    assert code == 200, body
    assert body["status"] == "recovered" and body["retentionDays"] == 30
    assert body["newVersion"] == body["currentVersion"] + 1
    assert db_rows(a, "SELECT is_deleted FROM memories WHERE id = ?", (mem_id,)) == [(0,)]
    code, body, _ = await client(cluster, "POST", url, {"reason": "again"})
    assert (code, body["status"]) == (409, "not_deleted")
    code, body, _ = await client(
        cluster, "POST", f"{a.daemon_url}/api/memory/nope/recover", {"reason": "x"}
    )
    assert (code, body["status"]) == (404, "not_found")
    code, body, _ = await client(cluster, "POST", url, {})
    assert (code, body) == (400, {"error": "reason is required"})


async def test_recover_is_routed_to_the_owner_and_checked_for_ownership(
    cluster: Cluster,
) -> None:
    """alice lives on a. Through b, a recover naming alice reaches a's daemon; ones naming
    bob or carol (b's agents) go to b, which does not hold alice's memory."""
    a, b = await two_nodes(cluster)
    mem_id = await _deleted(cluster, a.daemon_url, "alice")
    code, body, _ = await client(
        cluster,
        "POST",
        f"{b.url}/api/memory/{mem_id}/recover?agentId=bob",
        {"reason": "not mine"},
    )
    assert code == 404, body  # bob is local to b, whose daemon does not have the id
    code, body, headers = await client(
        cluster,
        "POST",
        f"{a.url}/api/memory/{mem_id}/recover",
        {"reason": "not mine"},
        headers={"x-signet-agent-id": "carol"},
    )
    # carol lives on b: the request goes there, and b's daemon has no such id.
    assert code == 404 and headers["x-signet-cluster-served-by"] == "b", body
    assert db_rows(a, "SELECT is_deleted FROM memories WHERE id = ?", (mem_id,)) == [(1,)]
    code, body, headers = await client(
        cluster,
        "POST",
        f"{b.url}/api/memory/{mem_id}/recover?agentId=alice",
        {"reason": "mine"},
    )
    assert code == 200 and body["status"] == "recovered", body
    assert headers["x-signet-cluster-served-by"] == "a"
    assert db_rows(a, "SELECT is_deleted FROM memories WHERE id = ?", (mem_id,)) == [(0,)]


async def test_a_local_agent_cannot_recover_another_agents_memory(cluster: Cluster) -> None:
    """Two agents on one TS node: the ownership check refuses the foreign id with 403."""
    a = await cluster.add(
        "a",
        [
            {"name": "alice", "memory": {"read_policy": "isolated"}},
            {"name": "zed", "memory": {"read_policy": "isolated"}},
        ],
        coordinator=True,
    )
    mem_id = await _deleted(cluster, a.daemon_url, "alice")
    code, body, _ = await client(
        cluster, "POST", f"{a.url}/api/memory/{mem_id}/recover?agentId=zed", {"reason": "x"}
    )
    assert code == 403 and body["code"] == "not_agent_owner", body
    assert db_rows(a, "SELECT is_deleted FROM memories WHERE id = ?", (mem_id,)) == [(1,)]
