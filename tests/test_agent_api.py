"""The agent API (`/api/agents*`) at any sidecar speaks for the whole cluster, whatever
flavor each node's daemon runs: the roster lists every node's agents in the daemon's shape,
one agent is answered by its owner, a create never makes a second owner, a delete goes to
the owner."""

from __future__ import annotations

from typing import Any

from sidecar.memory.routing import current_view

from .cluster_helpers import Cluster, Node, wait_for
from .routing_helpers import ALICE, BOB, CAROL, client, wait_routes

ROW_KEYS = {"id", "name", "read_policy", "policy_group", "created_at", "updated_at", "cluster"}


async def _three(cluster: Cluster) -> tuple[Node, Node, Node]:
    """a (ts): alice; b (rust): bob, carol (from agent.yaml: Rust never syncs it);
    c (ts-legacy): no agents but `default`."""
    a = await cluster.add("a", [ALICE], coordinator=True)
    b = await cluster.add("b", [BOB, CAROL], coordinators=(a.url,), flavor="rust")
    c = await cluster.add("c", [], coordinators=(a.url,), flavor="ts-legacy")
    for node in (a, c):
        await wait_routes(cluster, node, {"bob": ("remote", "b"), "carol": ("remote", "b")})
    await wait_routes(cluster, b, {"alice": ("remote", "a")})
    await wait_routes(cluster, c, {"alice": ("remote", "a")})
    for node in (a, b, c):

        async def sees_all(node: Node = node) -> bool:
            view = current_view(node.app)
            return view is not None and {p.node_id for p in view.peers} == {"a", "b", "c"}

        await wait_for(sees_all, what=f"{node.name} seeing every node")
    return a, b, c


async def _daemon_rows(cluster: Cluster, node: Node) -> dict[str, dict[str, Any]]:
    code, body, _ = await client(cluster, "GET", node.daemon_url + "/api/agents")
    assert code == 200, body
    return {row["id"]: row for row in body["agents"]}


async def test_the_roster_at_any_sidecar_lists_every_nodes_agents(cluster: Cluster) -> None:
    """At each node (ts, rust, legacy): every agent once, ordered by name, in the daemon's
    row shape (a's rows exactly as a's daemon wrote them), each with its node; `default`
    only as the asking node's own row."""
    a, b, c = await _three(cluster)
    a_rows = await _daemon_rows(cluster, a)
    bob_row = (await client(cluster, "POST", b.daemon_url + "/api/agents", {"name": "bob"}))[1]
    for node in (a, b, c):
        code, body, headers = await client(cluster, "GET", node.url + "/api/agents")
        assert code == 200, body
        rows = body["agents"]
        assert [r["name"] for r in rows] == ["alice", "bob", "carol", "default"], node.name
        assert all(set(r) == ROW_KEYS for r in rows), rows
        where = {r["id"]: r["cluster"]["node_id"] for r in rows}
        assert where == {"alice": "a", "bob": "b", "carol": "b", "default": node.name}
        assert {r["cluster"]["state"] for r in rows} == {"alive"}
        alice = next(r for r in rows if r["id"] == "alice")
        assert {k: v for k, v in alice.items() if k != "cluster"} == a_rows["alice"]
        bob = next(r for r in rows if r["id"] == "bob")
        assert {k: v for k, v in bob.items() if k != "cluster"} == bob_row
        # carol is only in b's agent.yaml (Rust never syncs it): a row built from the roster.
        carol = next(r for r in rows if r["id"] == "carol")
        assert carol["cluster"]["source"] == "roster" and carol["read_policy"] == "isolated"
        assert body["cluster"]["partial"] is False
        assert headers["x-signet-cluster-missing"] == "0/3", (node.name, body["cluster"])


async def test_one_agent_is_answered_by_its_owner(cluster: Cluster) -> None:
    """alice (on ts a) through the legacy node, and through the rust node; an agent no node
    has is the daemon's own 404, whatever the asking node runs."""
    a, b, c = await _three(cluster)
    a_rows = await _daemon_rows(cluster, a)
    for node in (b, c):
        code, body, headers = await client(cluster, "GET", node.url + "/api/agents/alice")
        assert code == 200, body
        assert body == a_rows["alice"] | {"cluster": {"node_id": "a", "state": "alive"}}
        assert headers["x-signet-cluster-served-by"] == "a"
        code, body, _ = await client(cluster, "GET", node.url + "/api/agents/nobody")
        assert (code, body) == (404, {"error": "Agent not found"}), node.name
    code, body, _ = await client(cluster, "GET", c.url + "/api/agents/default")
    assert code == 200 and body["id"] == "default" and body["cluster"]["node_id"] == "c"


async def test_a_name_another_node_holds_is_not_created_again(cluster: Cluster) -> None:
    """alice lives on a: creating alice through b (or c) is refused, and b's daemon never
    gets the row. A new name is created on the asking node's daemon and routed there."""
    a, b, c = await _three(cluster)
    code, body, _ = await client(
        cluster, "POST", b.url + "/api/agents", {"name": "alice", "read_policy": "shared"}
    )
    assert code == 409 and body["code"] == "agent_exists_elsewhere", body
    assert body["owner"]["node_id"] == "a" and "alice" in body["error"]
    assert "alice" not in await _daemon_rows(cluster, b)
    code, body, _ = await client(cluster, "POST", c.url + "/api/agents", {"name": "zoe"})
    assert code == 501 and body["code"] == "agents_unsupported", body
    code, body, _ = await client(
        cluster, "POST", b.url + "/api/agents", {"name": "zoe", "read_policy": "shared"}
    )
    assert code == 201 and body["name"] == "zoe", body
    await wait_routes(cluster, a, {"zoe": ("remote", "b")})
    code, body, _ = await client(cluster, "POST", a.url + "/api/agents", {"name": "zoe"})
    assert code == 409, body


async def test_a_delete_goes_to_the_owner(cluster: Cluster) -> None:
    """Deleting alice through b removes the row from a's daemon; deleting an agent nobody
    has is the daemon's 404; `default` is refused by the local daemon. Each is counted."""
    a, b, _c = await _three(cluster)
    code, body, headers = await client(cluster, "DELETE", b.url + "/api/agents/alice")
    assert (code, body) == (200, {"success": True, "purged": False})
    assert headers["x-signet-cluster-served-by"] == "a"
    assert "alice" not in await _daemon_rows(cluster, a)
    code, body, _ = await client(cluster, "DELETE", b.url + "/api/agents/nobody")
    assert code == 404, body
    code, body, _ = await client(cluster, "DELETE", b.url + "/api/agents/default")
    assert code == 400, body
    assert cluster.session is not None
    async with cluster.session.get(b.url + "/metrics") as resp:
        text = await resp.text()
    for counted in ('route="agent_delete",target="a"', 'route="agent_delete",target="local"'):
        assert f'signet_cluster_proxied_requests_total{{outcome="ok",{counted}}}' in text


async def test_a_collision_is_visible_in_the_answers(cluster: Cluster) -> None:
    """alice is in both a's and b's rosters: a holds it (first seen); the info answer and
    both roster rows carry the collision."""
    a = await cluster.add("a", [ALICE], coordinator=True)
    await wait_routes(cluster, a, {"alice": ("local", "a")})
    b = await cluster.add("b", [ALICE, BOB], coordinators=(a.url,))
    await wait_routes(cluster, b, {"alice": ("remote", "a")})

    async def collided() -> bool:
        code, body, _ = await client(cluster, "GET", b.url + "/api/agents/alice")
        return code == 200 and "collision" in body["cluster"]

    await wait_for(collided, what="the collision in b's view")
    code, body, _ = await client(cluster, "GET", b.url + "/api/agents/alice")
    assert code == 200 and body["cluster"]["node_id"] == "a", body
    assert body["cluster"]["collision"]["winner"] == "a"
    assert sorted(body["cluster"]["collision"]["claimants"]) == ["a", "b"]
    code, body, _ = await client(cluster, "GET", b.url + "/api/agents")
    assert code == 200, body
    alices = [r for r in body["agents"] if r["id"] == "alice"]
    assert [r["cluster"]["node_id"] for r in alices] == ["a", "b"]
    assert all(r["cluster"]["collision"]["winner"] == "a" for r in alices)


async def test_a_down_node_is_listed_from_the_registry_and_reported(cluster: Cluster) -> None:
    """b's sidecar stops: its agents stay listed (state down, from the registry), and the
    answer says the roster is partial."""
    a = await cluster.add("a", [ALICE], coordinator=True)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await cluster.stop_sidecar(b)
    await cluster.wait_states(a, {"b": "down"})
    code, body, headers = await client(cluster, "GET", a.url + "/api/agents")
    assert code == 200, body
    bob = next(r for r in body["agents"] if r["id"] == "bob")
    assert bob["cluster"] == {"node_id": "b", "state": "down", "source": "registry"}
    assert body["cluster"]["partial"] is True and headers["x-signet-cluster-missing"] == "1/2"
