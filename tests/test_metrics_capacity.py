"""What keeps a coordinator cheap with many nodes (bench/capacity.py measures the effect):
heartbeat replies serialised once per registry version, full replies gzipped for nodes that
accept it, and a large registry's reply rebuilt at most every COALESCE_S while nodes join."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.membership import coordinator

from .cluster_helpers import Cluster, Node, registry_of

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]


def heartbeat(node_id: str, known: str | None = None) -> bytes:
    return json.dumps(
        {
            "protocol": {"min": 1, "max": 1},
            "node_id": node_id,
            "instance_id": "i-" + node_id,
            "url": "http://127.0.0.1:9",
            "sidecar_version": "0.1.0",
            "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
            "agents": [{"id": f"{node_id}-agent", "read_policy": "shared"}],
            "seq": 1,
            "sent_at": 1.0,
            "known_registry": known,
        }
    ).encode()


async def beat(
    cluster: Cluster, node: Node, node_id: str, known: str | None = None, gzip: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if not gzip:
        headers["Accept-Encoding"] = "identity"
    code, body, response_headers = await cluster.request(
        "POST",
        node.url + "/api/cluster/heartbeat",
        data=heartbeat(node_id, known),
        headers=headers,
        signer=cluster.signer_for(node_id),
    )
    assert code == 200, body
    return body, response_headers


async def test_full_replies_are_gzipped_for_nodes_that_accept_it(cluster: Cluster) -> None:
    """A full reply comes gzipped when asked (aiohttp clients, i.e. every sidecar, ask) and
    is the same document as the plain one; the short `unchanged` reply is never compressed."""
    a = await cluster.add("a", ALICE, coordinator=True)
    zipped, headers = await beat(cluster, a, "q")
    assert headers.get("Content-Encoding") == "gzip"
    plain, plain_headers = await beat(cluster, a, "q", gzip=False)
    assert "Content-Encoding" not in plain_headers
    assert zipped == plain and {p["node_id"] for p in plain["peers"]} >= {"a", "q"}
    short, short_headers = await beat(cluster, a, "q", known=plain["registry"])
    assert short["unchanged"] is True and "Content-Encoding" not in short_headers


async def test_large_registry_replies_are_coalesced_then_catch_up(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With COALESCE_ABOVE nodes or more, joins during the coalescing window get the reply
    built before them (naming the version it holds); once the window has passed the next
    reply names the current version and lists every node."""
    monkeypatch.setattr(coordinator, "COALESCE_ABOVE", 3)
    a = await cluster.add("a", ALICE, coordinator=True)
    for name in ("n1", "n2"):
        await beat(cluster, a, name)
    monkeypatch.setattr(coordinator, "COALESCE_S", 3600.0)  # the window never ends ...
    first, _ = await beat(cluster, a, "n3")
    held = first["registry"]
    second, _ = await beat(cluster, a, "n4")
    assert second["registry"] == held  # built before n4 joined: n4 is not in it yet
    assert "n4" not in {p["node_id"] for p in second["peers"]}
    assert registry_of(a).version > int(held.split(":")[1])
    monkeypatch.setattr(coordinator, "COALESCE_S", 0.0)  # ... until it does
    caught_up, _ = await beat(cluster, a, "n4", known=held)
    assert caught_up["unchanged"] is False
    assert caught_up["registry"].endswith(f":{registry_of(a).version}")
    assert {"a", "n1", "n2", "n3", "n4"} <= {p["node_id"] for p in caught_up["peers"]}
