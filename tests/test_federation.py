"""Federation: recall and search fan out by the reader's policy, merged, with explicit
partial results. Isolated agents, private memories and other groups never leak."""

from __future__ import annotations

import sqlite3
from typing import Any

from .cluster_helpers import Cluster, Node
from .routing_helpers import (
    ALICE,
    BOB,
    DAVE,
    ERIN,
    FRANK,
    clear_requests,
    client,
    daemon_requests,
    remember,
    wait_routes,
)

# Generous for a loaded test machine; the timeout tests set their own.
FANOUT = {"fanout_ceiling": 3.0}


async def _pair(cluster: Cluster) -> tuple[Node, Node]:
    """a: alice (isolated), erin (group ops), frank (shared); b: bob (shared), dave (ops)."""
    a = await cluster.add("a", [ALICE, ERIN, FRANK], coordinator=True, **FANOUT)
    b = await cluster.add("b", [BOB, DAVE], coordinators=(a.url,), **FANOUT)
    await wait_routes(cluster, a, {"bob": ("remote", "b"), "dave": ("remote", "b")})
    await wait_routes(cluster, b, {"alice": ("remote", "a"), "erin": ("remote", "a")})
    return a, b


async def _seed(cluster: Cluster, a: Node, b: Node) -> dict[str, str]:
    ids = {
        "alice_global": await remember(cluster, a.daemon_url, "deploy alice global", "alice"),
        "erin_global": await remember(cluster, a.daemon_url, "deploy erin global", "erin"),
        "frank_global": await remember(cluster, a.daemon_url, "deploy frank global", "frank"),
        "frank_private": await remember(
            cluster, a.daemon_url, "deploy frank private", "frank", visibility="private"
        ),
        "a_default": await remember(cluster, a.daemon_url, "deploy default on a"),
        "bob_private": await remember(
            cluster, b.daemon_url, "deploy bob private", "bob", visibility="private"
        ),
        "dave_global": await remember(cluster, b.daemon_url, "deploy dave global", "dave"),
    }
    return ids


async def _recall(
    cluster: Cluster, url: str, agent: str, **extra: Any
) -> tuple[int, Any, dict[str, str]]:
    body = {"query": "deploy", "agentId": agent, "limit": 20, **extra}
    return await client(cluster, "POST", url + "/api/memory/recall", body)


def _ids(body: Any) -> set[str]:
    return {hit["id"] for hit in body["results"]}


async def test_shared_reader_gets_every_nodes_global_memories_and_nothing_else(
    cluster: Cluster,
) -> None:
    """bob (shared, on b) asked through a: b answers as bob (his private memory, dave's
    global), a contributes the global memories of its non-isolated agents (erin, frank,
    default); alice's memory (isolated, even though global) and frank's private one stay
    on a. Every hit names its node and owning agent."""
    a, b = await _pair(cluster)
    ids = await _seed(cluster, a, b)
    for entry in (a, b):
        code, body, headers = await _recall(cluster, entry.url, "bob")
        assert code == 200, body
        assert _ids(body) == {
            ids["bob_private"],
            ids["dave_global"],
            ids["erin_global"],
            ids["frank_global"],
            ids["a_default"],
        }
        tags = {hit["id"]: hit["cluster"] for hit in body["results"]}
        assert tags[ids["frank_global"]] == {"node_id": "a", "agent_id": "frank"}
        assert tags[ids["bob_private"]] == {"node_id": "b", "agent_id": "bob"}
        assert body["cluster"]["partial"] is False and body["cluster"]["missing_agents"] == []
        assert {n["node_id"]: (n["role"], n["status"]) for n in body["cluster"]["nodes"]} == {
            "b": ("owner", "ok"),
            "a": ("contributor", "ok"),
        }
        assert headers["x-signet-cluster-missing"] == "0/2"
        assert body["meta"]["totalReturned"] == len(body["results"])


async def test_isolated_reader_never_fans_out(cluster: Cluster) -> None:
    """alice (isolated) reads only on her owner: nothing is asked of b, the answer is a's
    daemon's own (no cluster block)."""
    a, b = await _pair(cluster)
    ids = await _seed(cluster, a, b)
    await clear_requests(cluster, b)
    code, body, headers = await _recall(cluster, b.url, "alice")
    assert code == 200 and _ids(body) == {ids["alice_global"]}
    assert "cluster" not in body and headers["x-signet-cluster-missing"] == "0/1"
    assert await daemon_requests(cluster, b) == []


async def test_group_reader_sees_its_group_and_nothing_else(cluster: Cluster) -> None:
    """dave (group ops, on b) gets his own and, from a, only erin's global memory (ops):
    not frank's (shared), not a's default, not alice's."""
    a, b = await _pair(cluster)
    ids = await _seed(cluster, a, b)
    code, body, _ = await _recall(cluster, a.url, "dave")
    assert code == 200, body
    assert _ids(body) == {ids["dave_global"], ids["erin_global"]}


async def test_agent_id_is_on_every_federated_query(cluster: Cluster) -> None:
    """The contributing daemon is asked as a named agent (never an implicit default) and
    the owner's daemon as the reader."""
    a, b = await _pair(cluster)
    await _seed(cluster, a, b)
    await clear_requests(cluster, a)
    await clear_requests(cluster, b)
    code, _, _ = await _recall(cluster, a.url, "bob")
    assert code == 200
    asked_a = [r for r in await daemon_requests(cluster, a) if r["path"] == "/api/memory/recall"]
    asked_b = [r for r in await daemon_requests(cluster, b) if r["path"] == "/api/memory/recall"]
    assert [r["body"]["agentId"] for r in asked_b] == ["bob"]
    assert [r["body"]["agentId"] for r in asked_a] == ["default"]
    assert asked_a[0]["body"]["limit"] > 20  # over-fetched, then filtered


async def test_search_routes_fan_out_too(cluster: Cluster) -> None:
    """GET /memory/search (the dashboard search) as default on b also carries a's
    contributions, filtered the same way."""
    a, b = await _pair(cluster)
    ids = await _seed(cluster, a, b)
    code, body, _ = await client(cluster, "GET", b.url + "/memory/search?q=deploy&limit=20")
    assert code == 200, body
    found = _ids(body)
    assert {ids["erin_global"], ids["frank_global"], ids["a_default"]} <= found
    assert not {ids["alice_global"], ids["frank_private"]} & found


async def test_routed_and_federated_reads_are_counted(cluster: Cluster) -> None:
    """/metrics counts a routed write by route, target node and outcome, and a fan-out by
    outcome (a complete one here)."""
    a, _b = await _pair(cluster)
    await remember(cluster, a.url, "counted note", "bob")
    code, _, _ = await _recall(cluster, a.url, "bob")
    assert code == 200
    assert cluster.session is not None
    async with cluster.session.get(a.url + "/metrics") as resp:
        text = await resp.text()
    assert (
        'signet_cluster_proxied_requests_total{outcome="ok",route="remember",target="b"} 1.0'
        in text
    )
    assert 'signet_cluster_fanout_requests_total{outcome="complete"} 1.0' in text


def _about_staging(content: str, **extra: Any) -> dict[str, Any]:
    aspect = {"entityName": "staging", "aspect": "ops", "attributes": [{"content": content}]}
    return {"content": content, "structured": {"aspects": [aspect]}, **extra}


async def test_knowledge_expand_merges_the_entitys_memories_from_every_node(
    cluster: Cluster,
) -> None:
    """Expanding an entity as a shared reader lists the memories that mention it on the
    owner and, from other nodes, only the global ones (a's private note stays on a)."""
    a, b = await _pair(cluster)
    ids = {}
    for node, key, body in [
        (a, "a_global", _about_staging("staging runs on host A")),
        (a, "a_private", _about_staging("staging root password hint", visibility="private")),
        (b, "b_global", _about_staging("staging deploys are blue-green")),
    ]:
        code, saved, _ = await client(
            cluster, "POST", node.daemon_url + "/api/memory/remember", body
        )
        assert code == 200, saved
        ids[key] = saved["id"]
    code, body, headers = await client(
        cluster, "POST", b.url + "/api/knowledge/expand", {"entity": "staging"}
    )
    assert code == 200, body
    found = {m["id"]: m["cluster"]["node_id"] for m in body["memories"]}
    assert found == {ids["b_global"]: "b", ids["a_global"]: "a"}
    assert body["memoryCount"] == 2 and body["entity"]["name"] == "staging"
    assert body["cluster"]["partial"] is False and headers["x-signet-cluster-missing"] == "0/2"


async def test_an_agent_made_isolated_stops_contributing_before_the_roster_is_reread(
    cluster: Cluster,
) -> None:
    """frank (shared, on a) is made isolated in a's daemon (as a roster sync at a daemon
    restart does) while a's sidecar still holds its old roster (re-read hourly here): from
    the next read on, frank's global memory is no longer contributed to bob on b, because
    the contribution checks the daemon's agents table as it is now."""
    a = await cluster.add(
        "a", [ALICE, ERIN, FRANK], coordinator=True, roster_refresh=3600, **FANOUT
    )
    b = await cluster.add("b", [BOB, DAVE], coordinators=(a.url,), **FANOUT)
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await wait_routes(cluster, b, {"frank": ("remote", "a")})
    ids = await _seed(cluster, a, b)
    code, body, _ = await _recall(cluster, b.url, "bob")
    assert code == 200 and ids["frank_global"] in _ids(body), body
    conn = sqlite3.connect(a.workspace / "memory" / "memories.db")
    try:
        conn.execute("UPDATE agents SET read_policy = 'isolated' WHERE id = 'frank'")
        conn.commit()
    finally:
        conn.close()
    code, body, _ = await _recall(cluster, b.url, "bob")
    assert code == 200, body
    assert ids["frank_global"] not in _ids(body)
    assert ids["erin_global"] in _ids(body)  # the others still contribute


async def test_an_unbounded_limit_is_read_as_the_daemons_read_it(cluster: Cluster) -> None:
    """A fanned-out read whose limit is infinite (a JSON 1e999, "Infinity", ?limit=inf)
    is clamped to 50 as the daemons clamp it, not a sidecar crash; a limit that is no
    number at all takes the default."""
    a, b = await _pair(cluster)
    await _seed(cluster, a, b)
    for limit in ("Infinity", "many"):
        code, body, _ = await _recall(cluster, a.url, "bob", limit=limit)
        assert code == 200 and body["cluster"]["partial"] is False, body
    code, body, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/recall",
        raw=b'{"query": "deploy", "agentId": "bob", "limit": 1e999}',
        headers={"Content-Type": "application/json"},
    )
    assert code == 200 and "cluster" in body, body
    code, body, _ = await client(
        cluster, "GET", a.url + "/memory/search?q=deploy&limit=inf&agentId=bob"
    )
    assert code == 200 and "cluster" in body, body
