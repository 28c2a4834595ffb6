"""Knowledge expand is served as the agent the daemon actually uses: a TS daemon expands as
`default` whatever the body names, so the sidecar never routes a TS expand to another node
(where it would read that node's `default`, private memories included)."""

from __future__ import annotations

from typing import Any

from .cluster_helpers import Cluster, Node
from .routing_helpers import ALICE, BOB, DAVE, ERIN, FRANK, client, wait_routes

FANOUT = {"fanout_ceiling": 3.0}


def _about(entity: str, content: str, **extra: Any) -> dict[str, Any]:
    aspect = {"entityName": entity, "aspect": "ops", "attributes": [{"content": content}]}
    return {"content": content, "structured": {"aspects": [aspect]}, **extra}


async def _pair(cluster: Cluster, flavor: str = "ts") -> tuple[Node, Node]:
    """a: alice (isolated), erin (ops), frank (shared); b: bob (shared), dave (ops)."""
    a = await cluster.add("a", [ALICE, ERIN, FRANK], coordinator=True, flavor=flavor, **FANOUT)
    b = await cluster.add("b", [BOB, DAVE], coordinators=(a.url,), flavor=flavor, **FANOUT)
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await wait_routes(cluster, b, {"frank": ("remote", "a"), "alice": ("remote", "a")})
    return a, b


async def _save(cluster: Cluster, node: Node, body: dict[str, Any]) -> str:
    code, saved, _ = await client(cluster, "POST", node.daemon_url + "/api/memory/remember", body)
    assert code == 200, saved
    return str(saved["id"])


async def test_a_ts_expand_naming_a_remote_agent_never_reads_the_owners_default(
    cluster: Cluster,
) -> None:
    """frank (shared) lives on a. An expand at b naming frank used to be routed to a, whose
    TS daemon expands as a's `default`, and so returned a's `default` *private* memory to a
    caller at b. Now it is served as b's `default` (what b's daemon would do) with the
    other nodes contributing only what a shared reader may see."""
    a, b = await _pair(cluster)
    a_private = await _save(
        cluster, a, _about("staging", "staging root password hint", visibility="private")
    )
    a_global = await _save(cluster, a, _about("staging", "staging runs on host A"))
    b_global = await _save(cluster, b, _about("staging", "staging deploys are blue-green"))
    for agent in ("frank", "alice", "bob", None):
        body: dict[str, Any] = {"entity": "staging"}
        if agent is not None:
            body["agentId"] = agent
        code, answer, headers = await client(cluster, "POST", b.url + "/api/knowledge/expand", body)
        assert code == 200, (agent, answer)
        found = {m["id"] for m in answer["memories"]}
        assert a_private not in found, agent
        assert found == {a_global, b_global}, agent
        assert headers["x-signet-cluster-served-by"] == "b", agent


async def test_an_expand_naming_an_agent_on_a_rust_node_goes_to_that_node(
    cluster: Cluster,
) -> None:
    """Rust expands as the body's agent: an expand at TS node b naming frank (shared, on
    Rust node a) is answered by a's daemon as frank."""
    a = await cluster.add("a", [ALICE, FRANK], coordinator=True, flavor="rust", **FANOUT)
    b = await cluster.add("b", [BOB], coordinators=(a.url,), **FANOUT)
    await wait_routes(cluster, b, {"frank": ("remote", "a")})
    code, saved, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        _about("staging", "frank keeps staging green", agentId="frank"),
    )
    assert code == 200, saved
    code, answer, headers = await client(
        cluster, "POST", b.url + "/api/knowledge/expand", {"entity": "staging", "agentId": "frank"}
    )
    assert code == 200, answer
    assert saved["id"] in {m["id"] for m in answer["memories"]}
    assert headers["x-signet-cluster-served-by"] == "a"


async def test_a_hop_a_ts_daemon_could_only_serve_as_default_is_refused(
    cluster: Cluster,
) -> None:
    """A sender with an out-of-date view routes an expand for frank to TS node a: a refuses
    it (421) instead of answering as its own `default`."""
    a, _b = await _pair(cluster)
    await _save(cluster, a, _about("staging", "a default secret", visibility="private"))
    data = b'{"entity": "staging", "agentId": "frank"}'
    code, answer, _ = await cluster.request(
        "POST",
        a.url + "/api/knowledge/expand",
        data=data,
        headers={
            "Content-Type": "application/json",
            "x-signet-cluster-hop": "b",
            "x-signet-cluster-agent": "frank",
        },
        signer=cluster.signer_for("b"),
    )
    assert code == 421 and answer["code"] == "agent_not_honoured", answer
