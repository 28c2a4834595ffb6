"""`GET /api/cluster/resolve`, `GET /api/cluster/routes` and the `resolve` / `routes`
commands: owner, its URL, policy and the age of the answer."""

from __future__ import annotations

import json

from .cluster_helpers import Cluster
from .routing_helpers import client, routes_of, two_nodes
from .test_cli import run_cli


async def test_resolve_names_owner_url_policy_and_freshness(cluster: Cluster) -> None:
    """Asked on a member, resolve answers for remote, local, default and unknown agents with
    the owner, its sidecar URL, the read policy and the routing table's age; a missing
    agent id is a clear 400."""
    a, b = await two_nodes(cluster)
    code, body, _ = await client(cluster, "GET", b.url + "/api/cluster/resolve?agent_id=alice")
    assert code == 200
    assert body["route"] == "remote" and body["owner"]["node_id"] == "a"
    assert body["owner"]["url"] == a.url and body["owner"]["state"] == "alive"
    assert body["policy"] == {"read_policy": "isolated", "policy_group": None}
    assert body["answered_by"] == "b" and body["view"]["age_s"] >= 0
    assert body["view"]["stale"] is False
    local = (await client(cluster, "GET", b.url + "/api/cluster/resolve?agent_id=bob"))[1]
    assert (local["route"], local["owner"]["node_id"], local["policy"]["read_policy"]) == (
        "local",
        "b",
        "shared",
    )
    default = (await client(cluster, "GET", a.url + "/api/cluster/resolve?agent_id=default"))[1]
    assert default["route"] == "local" and default["reason"] == "default agent"
    unknown = (await client(cluster, "GET", a.url + "/api/cluster/resolve?agent_id=ghost"))[1]
    assert unknown["route"] == "local" and unknown["reason"] == "unknown agent"
    code, body, _ = await client(cluster, "GET", a.url + "/api/cluster/resolve")
    assert code == 400 and "agent_id" in body["error"]
    routes = await routes_of(cluster, a)
    assert sorted(routes) == ["alice", "bob", "carol"]


async def test_resolve_and_routes_commands(cluster: Cluster) -> None:
    """`signet-cluster resolve carol` prints owner and URL (exit 0); `routes` lists every
    agent with its owner; `--json` is the API's document."""
    a, b = await two_nodes(cluster)
    code, out, err = await run_cli("--sidecar", a.url, "resolve", "carol")
    assert code == 0, err
    assert "owner    b " + b.url in out and "remote" in out
    code, out, err = await run_cli("--sidecar", a.url, "resolve", "carol", "--json")
    assert code == 0 and json.loads(out)["owner"]["node_id"] == "b"
    code, out, err = await run_cli("--sidecar", a.url, "routes")
    assert code == 0, err
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert lines["alice"][2] == "a" and lines["carol"][2] == "b" and lines["bob"][4] == "remote"
