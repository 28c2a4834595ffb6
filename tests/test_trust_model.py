"""Issue 12, against running sidecars: no credential reaches beyond its role. Each test
replays one break found by the adversarial review and shows it no longer works."""

from __future__ import annotations

import json
import time
from typing import Any

from sidecar import keys

from .cluster_helpers import Cluster, free_port, registry_of, wait_for
from .routing_helpers import (
    ALICE,
    BOB,
    client,
    db_rows,
    remember,
    routes_of,
    two_nodes,
    wait_routes,
)

OUTSIDER = "198.51.100.23"  # TEST-NET-2: the peer-address hook pretends a remote caller
EPOCH = "1970-01-01T00:00:00Z"


def forged_heartbeat(node_id: str, url: str, agents: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "protocol": {"min": 1, "max": 1},
        "node_id": node_id,
        "instance_id": "i-" + node_id,
        "url": url,
        "sidecar_version": "0.1.0",
        "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
        "agents": [{"id": a, "read_policy": "shared", "created_at": EPOCH} for a in agents],
        "seq": 1,
        "sent_at": time.time(),
        **extra,
    }


async def test_a_claim_with_an_older_created_at_moves_no_agent(cluster: Cluster) -> None:
    """Agent hijack by claim: a key holder heartbeats as its own node claiming alice and bob
    with created_at 1970. Every route stays where it was (on both nodes), the claim shows
    as a collision, and after the attacker stops the live owners keep their agents."""
    a, b = await two_nodes(cluster)
    before = {n.name: await routes_of(cluster, n) for n in (a, b)}
    evil_url = f"http://127.0.0.1:{free_port()}"
    beat = forged_heartbeat("aaa-evil", evil_url, ["alice", "bob"])
    code, body = await cluster.post(
        a.url + "/api/cluster/heartbeat", beat, signer=cluster.signer_for("aaa-evil")
    )
    assert code == 200, body

    async def collisions_seen() -> bool:
        status = await cluster.status(b)
        return {c["agent_id"] for c in status["collisions"]} == {"alice", "bob"}

    await wait_for(collisions_seen, what="the claim shown as a collision on b")
    for node in (a, b):
        assert await routes_of(cluster, node) == before[node.name], node.name
        status = await cluster.status(node)
        winners = {c["agent_id"]: (c["winner"], c["rule"]) for c in status["collisions"]}
        assert winners == {"alice": ("a", "first_claim"), "bob": ("b", "first_claim")}
    # The attacker goes quiet: it is down, and still owns nothing.
    registry = registry_of(a)

    async def attacker_down() -> bool:
        record = registry.record("aaa-evil")
        return record is not None and record.state == "down"

    await wait_for(attacker_down, what="the attacker marked down")
    for node in (a, b):
        assert await routes_of(cluster, node) == before[node.name], node.name
    # alice's own node still serves alice's own memories.
    mine = await remember(cluster, a.url, "alice's private launch plan", "alice")
    assert db_rows(a, "SELECT agent_id FROM memories WHERE id = ?", (mine,)) == [("alice",)]


async def test_the_first_claim_survives_a_coordinator_restart(cluster: Cluster) -> None:
    """The first claim is persisted: after the coordinator restarts, an attacker whose
    heartbeat arrives before the owner's does not take the agent."""
    a, b = await two_nodes(cluster)
    await cluster.stop_sidecar(b)
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a)
    beat = forged_heartbeat("aaa-evil", f"http://127.0.0.1:{free_port()}", ["bob"])
    code, body = await cluster.post(
        a.url + "/api/cluster/heartbeat", beat, signer=cluster.signer_for("aaa-evil")
    )
    assert code == 200, body
    await cluster.start_sidecar(b)

    async def bob_on_b() -> bool:
        routes = {r.agent_id: r.node_id for r in registry_of(a).routing()[0]}
        return routes.get("bob") == "b"

    await wait_for(bob_on_b, what="bob routed to its first holder after the restart")
    (collision,) = registry_of(a).routing()[1]
    assert collision.winner == "b" and collision.claimants == ("aaa-evil", "b")


async def test_a_signature_does_not_carry_over_to_another_node(cluster: Cluster) -> None:
    """Replay to another node: a signed `promote --demote` captured on its way to node b,
    sent unchanged to coordinator a within the skew window, is refused; a stays a
    coordinator."""
    a, b = await two_nodes(cluster)
    body = b'{"coordinator": false}'
    ctype = {"Content-Type": "application/json"}
    b_host = b.url.split("//")[1]
    signed = cluster.signer.headers("POST", b_host, "/api/cluster/promote", body, ctype)
    captured = {**ctype, **signed, "Host": b_host}
    code, answer, _ = await cluster.request(
        "POST", a.url + "/api/cluster/promote", data=body, headers=captured, signed=False
    )
    assert code == 401 and answer["reason"] == "wrong_host", answer
    assert a.app[keys.IDENTITY].coordinator is True


async def test_a_bearer_token_reaches_only_a_daemon_that_checks_it(cluster: Cluster) -> None:
    """Mixed auth modes: the first sidecar's daemon runs in team mode, the owner's in local
    mode. `Authorization: Bearer garbage` from another host reads none of bob's memories
    and writes nothing as bob: 401, because no daemon on the way would check the token."""
    a = await cluster.add("a", [ALICE], coordinator=True, daemon_auth_mode="team")
    b = await cluster.add("b", [BOB], coordinators=(a.url,), daemon_auth_mode="local")
    await cluster.wait_states(a, {"b": "alive"})

    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await remember(cluster, b.url, "bob's private note on the vault code", "bob")
    a.app[keys.AUTH].peer_override = OUTSIDER
    garbage = {"Authorization": "Bearer garbage"}
    code, answer, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/recall",
        {"query": "vault", "agentId": "bob"},
        headers=garbage,
    )
    assert code == 401, answer
    assert "vault" not in json.dumps(answer)
    rows = db_rows(b, "SELECT count(*) FROM memories")
    code, answer, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        {"content": "written on a garbage token", "agentId": "bob"},
        headers=garbage,
    )
    assert code == 401, answer
    assert db_rows(b, "SELECT count(*) FROM memories") == rows


async def test_an_unreadable_modify_or_forget_body_is_refused(cluster: Cluster) -> None:
    """Ownership guard: a modify or forget naming alice's memory, sent as bob with
    `charset=latin-1` and one invalid UTF-8 byte (which a real 0.145.7 daemon decodes as
    U+FFFD and applies), is refused with 400 and changes nothing."""
    a = await cluster.add("a", [ALICE, BOB], coordinator=True)
    alices = await remember(cluster, a.url, "alice's private memory", "alice")
    latin = {"Content-Type": "application/json; charset=latin-1"}
    modify = json.dumps(
        {"agentId": "bob", "patches": [{"id": alices, "content": "bob was \xe9", "reason": "x"}]},
        ensure_ascii=False,
    ).encode("latin-1")
    forget = json.dumps(
        {"agentId": "bob", "mode": "execute", "ids": [alices], "reason": "\xe9"},
        ensure_ascii=False,
    ).encode("latin-1")
    for path, raw in (("/api/memory/modify", modify), ("/api/memory/forget", forget)):
        code, answer, _ = await client(cluster, "POST", a.url + path, raw=raw, headers=latin)
        assert code == 400 and answer["code"] == "body_unreadable", (path, answer)
        utf8 = raw.decode("latin-1").encode()
        code, answer, _ = await client(cluster, "POST", a.url + path, raw=utf8, headers=latin)
        assert code == 403, (path, answer)
    assert db_rows(a, "SELECT content, is_deleted FROM memories WHERE id = ?", (alices,)) == [
        ("alice's private memory", 0)
    ]
