"""Helpers for the routing and federation tests: small clusters of real dev daemons and
sidecars, client calls made the way a harness makes them (unsigned, from loopback), and
reads of what each daemon received and stored."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .cluster_helpers import Cluster, Node, wait_for

ALICE = {"name": "alice", "memory": {"read_policy": "isolated"}}
BOB = {"name": "bob", "memory": {"read_policy": "shared"}}
CAROL = {"name": "carol", "memory": {"read_policy": "isolated"}}
DAVE = {"name": "dave", "memory": {"read_policy": {"type": "group", "group": "ops"}}}
ERIN = {"name": "erin", "memory": {"read_policy": {"type": "group", "group": "ops"}}}
FRANK = {"name": "frank", "memory": {"read_policy": "shared"}}


async def client(
    cluster: Cluster,
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """A harness's call: unsigned, JSON unless `raw` bytes are given."""
    sent = dict(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    if body is not None and raw is None:
        sent.setdefault("Content-Type", "application/json")
    return await cluster.request(method, url, data=data, headers=sent, signed=False)


async def routes_of(cluster: Cluster, node: Node) -> dict[str, dict[str, Any]]:
    code, body, _ = await client(cluster, "GET", node.url + "/api/cluster/routes")
    assert code == 200, body
    return {entry["agent_id"]: entry for entry in body["routes"]}


async def wait_routes(cluster: Cluster, node: Node, expected: dict[str, tuple[str, str]]) -> None:
    """Wait until `node` routes each agent as (route kind, owner node id)."""

    async def check() -> bool:
        routes = await routes_of(cluster, node)
        return all(
            agent in routes and (routes[agent]["route"], routes[agent]["owner"]["node_id"]) == want
            for agent, want in expected.items()
        )

    await wait_for(check, what=f"{node.name} routes {expected}")


async def daemon_requests(cluster: Cluster, node: Node) -> list[dict[str, Any]]:
    code, body, _ = await client(cluster, "GET", node.daemon_url + "/__devdaemon/requests")
    assert code == 200
    return list(body["requests"])


async def clear_requests(cluster: Cluster, node: Node) -> None:
    await client(cluster, "DELETE", node.daemon_url + "/__devdaemon/requests")


async def set_faults(cluster: Cluster, node: Node, **faults: Any) -> None:
    code, body, _ = await client(cluster, "POST", node.daemon_url + "/__devdaemon/faults", faults)
    assert code == 200, body


def db_rows(node: Node, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the node's daemon database, read-only (as an operator would check it)."""
    path = node.workspace / "memory" / "memories.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def remember(
    cluster: Cluster, url: str, content: str, agent: str | None = None, **extra: Any
) -> str:
    """Remember through `url` (a sidecar or a daemon) and return the new memory's id."""
    body: dict[str, Any] = {"content": content, **extra}
    if agent is not None:
        body["agentId"] = agent
    code, answer, _ = await client(cluster, "POST", url + "/api/memory/remember", body)
    assert code == 200, answer
    return str(answer["id"])


async def two_nodes(
    cluster: Cluster, *, flavor_a: str = "ts", flavor_b: str = "ts"
) -> tuple[Node, Node]:
    """Coordinator `a` (alice isolated) and member `b` (bob shared, carol isolated),
    each routing the other's agents."""
    a = await cluster.add("a", [ALICE], coordinator=True, flavor=flavor_a)
    b = await cluster.add("b", [BOB, CAROL], coordinators=(a.url,), flavor=flavor_b)
    want = {"alice": ("local", "a"), "bob": ("remote", "b"), "carol": ("remote", "b")}
    await wait_routes(cluster, a, want)
    await wait_routes(
        cluster, b, {"alice": ("remote", "a"), "bob": ("local", "b"), "carol": ("local", "b")}
    )
    return a, b
