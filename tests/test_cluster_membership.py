"""Heartbeats, the registry and membership across real sidecars and dev daemons."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sidecar import keys
from signet_cluster.clock import ManualClock
from signet_cluster.protocol import PROTOCOL_MAX, ProtocolRange

from .cluster_helpers import Cluster, TestServer, free_port, registry_of, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]


async def three_nodes(
    cluster: Cluster, clock: ManualClock | None = None
) -> tuple[object, object, object]:
    a = await cluster.add("a", ALICE, coordinator=True, clock=clock)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    c = await cluster.add("c", CAROL, coordinators=(a.url,), flavor="rust")
    await cluster.wait_states(a, {"a": "alive", "b": "alive", "c": "alive"})
    return a, b, c


async def test_three_node_cluster_forms_with_agents_and_routes(cluster: Cluster) -> None:
    """Every node is alive in status with its daemon flavor, version and agents, and every
    member holds the routing table."""
    a, b, c = await three_nodes(cluster)
    status = await cluster.status(a)
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert nodes["c"]["daemon"]["flavor"] == "rust"
    assert nodes["b"]["daemon"] == {
        "flavor": "ts",
        "version": "0.145.7",
        "healthy": True,
        "error": None,
    }
    assert {x["id"]: x["read_policy"] for x in nodes["a"]["agents"]} == {
        "alice": "isolated",
        "default": "shared",
    }
    assert {x["id"]: x["policy_group"] for x in nodes["c"]["agents"]}[
        "carol"
    ] is None  # rust never syncs the yaml
    routes = {r["agent_id"]: r["node_id"] for r in status["routes"]}
    assert routes == {"alice": "a", "bob": "b", "carol": "c"}

    async def member_has_routes() -> bool:
        local = await cluster.get(b.url + "/api/cluster/status?local=1")
        return {r["agent_id"] for r in local[1]["routes"]} == {"alice", "bob", "carol"}

    await wait_for(member_has_routes, what="member routing table")
    # A member asked for status relays the coordinator's view.
    via_member = await cluster.status(c)
    assert via_member["answered_by"] == "a" and via_member["asked"] == "c"


async def test_ttl_expiry_removes_a_dead_node_from_routing(cluster: Cluster) -> None:
    """A sidecar that stops heartbeating is marked down once the (manual) clock passes the
    TTL, and its agents leave the routing table; it comes back when it heartbeats again."""
    clock = ManualClock()
    a, b, _c = await three_nodes(cluster, clock)
    await cluster.stop_sidecar(b)
    registry = registry_of(a)
    clock.advance(registry.ttl + 0.5)
    status = await cluster.wait_states(a, {"b": "down", "a": "alive", "c": "alive"})
    assert "bob" not in {r["agent_id"] for r in status["routes"]}
    assert next(n for n in status["nodes"] if n["node_id"] == "b")["state"] == "down"
    await cluster.start_sidecar(b)
    status = await cluster.wait_states(a, {"b": "alive"})
    assert "bob" in {r["agent_id"] for r in status["routes"]}


async def test_legacy_daemon_appears_as_one_default_agent(cluster: Cluster) -> None:
    """A TS < 0.76 daemon has no agents: the node carries only `default`, even with a roster on disk."""
    a = await cluster.add("a", [], coordinator=True)
    await cluster.add("old", ALICE, flavor="ts-legacy", coordinators=(a.url,))
    status = await cluster.wait_states(a, {"old": "alive"})
    old = next(n for n in status["nodes"] if n["node_id"] == "old")
    assert old["daemon"]["flavor"] == "ts-legacy" and old["daemon"]["version"] == "0.58.1"
    assert [x["id"] for x in old["agents"]] == ["default"]


async def test_join_and_remove_round_trip_persist_across_coordinator_restart(
    cluster: Cluster,
) -> None:
    """join makes a standalone sidecar a member (idempotently); the membership survives a
    coordinator restart and is rebuilt within a TTL; remove undoes it and is idempotent."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", BOB)  # knows no coordinator yet
    code, body = await cluster.post(
        a.url + "/api/cluster/join", {"address": b.url.removeprefix("http://")}
    )
    assert code == 200, body
    assert (
        body["node_id"] == "b"
        and body["already_joined"] is False
        and body["told_to_heartbeat"] is True
    )
    await cluster.wait_states(a, {"b": "alive"})
    code, again = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 200 and again["already_joined"] is True

    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a)
    status = await cluster.status(a)
    assert {n["node_id"]: n["joined"] for n in status["nodes"]}.get("b") is True
    await cluster.wait_states(a, {"b": "alive"}, timeout=a.settings.ttl + 5)

    code, removed = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 200 and removed["removed"] is True
    code, again = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 200 and again["removed"] is False
    # The removed node was told to stop and is refused if it heartbeats anyway.
    await wait_for(lambda: _not_listed(cluster, a, "b"), what="b to stay removed")
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a)
    status = await cluster.status(a)
    assert "b" not in {n["node_id"] for n in status["nodes"]}


async def _not_listed(cluster: Cluster, via: object, node: str) -> bool:
    status = await cluster.status(via)  # type: ignore[arg-type]
    return node not in {n["node_id"] for n in status["nodes"]}


async def test_a_removed_member_says_so_in_readyz_and_status(cluster: Cluster) -> None:
    """A member removed from the cluster stops heartbeating to its configured coordinator
    and says why: /readyz names the removal and how to undo it, status lists the contact
    as removed (not "no coordinator configured"); `join` makes it a member again."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    code, _ = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 200

    async def says_removed() -> bool:
        _code, ready = await cluster.get(b.url + "/readyz")
        return "removed from the cluster" in ready["reason"]

    await wait_for(says_removed, what="readyz to name the removal")
    _code, ready = await cluster.get(b.url + "/readyz")
    assert a.url in ready["reason"] and "signet-cluster join" in ready["reason"]
    _code, local = await cluster.get(b.url + "/api/cluster/status?local=1")
    assert [(c["url"], c["removed"]) for c in local["coordinator_contacts"]] == [(a.url, True)]
    code, _ = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 200
    await cluster.wait_states(a, {"b": "alive"})
    _code, ready = await cluster.get(b.url + "/readyz")
    assert ready["reason"] == "ready"


async def test_join_errors_are_clear(cluster: Cluster) -> None:
    """join of an unreachable address is 502 with the address; join sent to a member is 421
    naming the coordinators; a bad address is 400."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", [], coordinators=(a.url,))
    code, body = await cluster.post(a.url + "/api/cluster/join", {"address": "127.0.0.1:1"})
    assert code == 502 and "127.0.0.1:1" in body["error"]
    code, body = await cluster.post(b.url + "/api/cluster/join", {"address": "127.0.0.1:1"})
    assert code == 421 and body["details"]["coordinators"] == [a.url]
    code, body = await cluster.post(a.url + "/api/cluster/join", {"address": "no port"})
    assert code == 400 and body["code"] == "invalid_request"


def _node_info(**changes: object) -> dict[str, object]:
    info: dict[str, object] = {
        "node_id": "big",
        "url": "http://127.0.0.1:9",
        "sidecar_version": "0.1.0",
        "protocol": {"min": 1, "max": 1},
        "coordinator": False,
        "daemon": {"flavor": "ts"},
    }
    info.update(changes)
    return info


async def _join_fake_sidecar(cluster: Cluster, via: object, answer: str) -> tuple[int, Any]:
    """Join a fake sidecar whose /api/cluster/info answers `answer`."""

    async def info(_request: web.Request) -> web.Response:
        return web.Response(text=answer, content_type="application/json")

    fake = web.Application()
    fake.router.add_get("/api/cluster/info", info)
    server = TestServer(fake, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        address = str(server.make_url("")).rstrip("/")
        return await cluster.post(via.url + "/api/cluster/join", {"address": address})  # type: ignore[attr-defined]
    finally:
        await server.close()


async def test_an_endless_answer_from_a_peer_is_cut_off(cluster: Cluster) -> None:
    """A peer's answer is read up to a bound (PeerClient.max_reply_bytes), not into memory
    whatever its size: joining an address that answers the probe with more than that is a
    clear 502 naming the bound, and nothing is recorded."""
    a = await cluster.add("a", [], coordinator=True)
    a.app[keys.PEERS].max_reply_bytes = 4096
    code, body = await _join_fake_sidecar(cluster, a, json.dumps(_node_info()) + " " * 100_000)
    assert code == 502 and "4096 bytes" in body["error"], body
    assert registry_of(a).record("big") is None


async def test_join_refuses_a_sidecar_that_describes_itself_badly(cluster: Cluster) -> None:
    """The join probe's answer is validated like every message: a node id or URL that no
    sidecar could have is a clear 502 ("not a compatible sidecar"), never a recorded
    decision or a 500."""
    a = await cluster.add("a", [], coordinator=True)
    for bad in ({"node_id": "bad id"}, {"url": "javascript:alert(1)"}):
        code, body = await _join_fake_sidecar(cluster, a, json.dumps(_node_info(**bad)))
        assert code == 502 and "not a compatible sidecar" in body["error"], body
    _code, admin = await cluster.get(a.url + "/api/cluster/admin")
    assert admin["nodes"] == []


async def _raw_heartbeat(cluster: Cluster, url: str, data: bytes) -> tuple[int, dict[str, object]]:
    # Signed as the node the heartbeat describes (a node may only speak for itself).
    try:
        node = str(json.loads(data).get("node_id", "x"))
    except (ValueError, AttributeError):
        node = "x"
    code, body, _ = await cluster.request(
        "POST",
        url + "/api/cluster/heartbeat",
        data=data,
        headers={"Content-Type": "application/json"},
        signer=cluster.signer_for(node if node.isalnum() else "x"),
    )
    return code, body


def _heartbeat(node_id: str = "x", **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "protocol": {"min": 1, "max": PROTOCOL_MAX},
        "node_id": node_id,
        "instance_id": "i1",
        "url": "http://127.0.0.1:9",
        "sidecar_version": "9.9.9",
        "daemon": {"flavor": "ts", "version": "1", "healthy": True},
        "agents": [{"id": "zed", "read_policy": "shared"}],
        "seq": 1,
        "sent_at": 1.0,
    }
    body.update(changes)
    return body


async def test_bad_heartbeats_get_clear_4xx_and_change_nothing(cluster: Cluster) -> None:
    """Malformed, invalid, oversized and unknown-version heartbeats are refused with a clear
    error and leave the registry exactly as it was."""
    a = await cluster.add("a", ALICE, coordinator=True)
    registry = registry_of(a)
    await wait_for(lambda: _has(registry, "a"), what="coordinator self-registration")
    before = (registry.version, [p.node_id for p in registry.peers()])

    code, body = await _raw_heartbeat(cluster, a.url, b"{not json")
    assert code == 400 and "not valid JSON" in body["error"]
    code, body = await _raw_heartbeat(
        cluster, a.url, json.dumps(_heartbeat(node_id="bad id", seq=-4)).encode()
    )
    assert code == 400
    assert any("body.node_id" in p for p in body["details"]) and any(
        "body.seq" in p for p in body["details"]
    )
    code, body = await _raw_heartbeat(cluster, a.url, json.dumps([1, 2]).encode())
    assert code == 400
    too_many = [{"id": f"agent{i}", "read_policy": "shared"} for i in range(1001)]
    code, body = await _raw_heartbeat(
        cluster, a.url, json.dumps(_heartbeat(agents=too_many)).encode()
    )
    assert code == 400
    huge = json.dumps(_heartbeat(sidecar_version="x" * (2 * 1024 * 1024))).encode()
    code, body = await _raw_heartbeat(cluster, a.url, huge)
    assert code == 413
    code, body = await _raw_heartbeat(
        cluster,
        a.url,
        json.dumps(
            _heartbeat(protocol={"min": PROTOCOL_MAX + 1, "max": PROTOCOL_MAX + 3})
        ).encode(),
    )
    assert code == 409 and body["code"] == "protocol_mismatch"
    assert body["details"]["supported"] == {"min": 1, "max": PROTOCOL_MAX}

    assert (registry.version, [p.node_id for p in registry.peers()]) == before


async def test_a_second_sidecar_with_the_same_node_id_is_refused(cluster: Cluster) -> None:
    """Two live sidecars with one node id (a copied state directory or config) would take
    turns owning its agents, splitting writes over two daemons. While the first heartbeats,
    one from another instance at another URL is refused with 409 `node_id_in_use` naming
    the holder and the registry keeps the first; once the first is silent for a TTL (a
    restart at a new address), the new one is accepted. The refused sidecar says why."""
    clock = ManualClock()
    a = await cluster.add("a", [], coordinator=True, clock=clock)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    twin = _heartbeat("b", instance_id="twin", url="http://127.0.0.1:9")
    code, body = await _raw_heartbeat(cluster, a.url, json.dumps(twin).encode())
    assert code == 409 and body["code"] == "node_id_in_use", body
    assert b.url in body["error"]
    assert registry_of(a).record("b").url == b.url

    c = await cluster.add("c", [], coordinators=(a.url,), node_id="b")

    async def refused() -> bool:
        error = c.app[keys.MEMBERSHIP].contact(a.url).error or ""
        return "node id" in error and b.url in error

    await wait_for(refused, what="the twin to say why it is refused")
    assert registry_of(a).record("b").url == b.url
    await cluster.stop_sidecar(b)
    await cluster.stop_sidecar(c)
    clock.advance(registry_of(a).ttl + 0.1)
    code, body = await _raw_heartbeat(cluster, a.url, json.dumps(twin).encode())
    assert code == 200, body
    assert registry_of(a).record("b").url == "http://127.0.0.1:9"


async def _has(registry: object, node_id: str) -> bool:
    return node_id in registry  # type: ignore[operator]


async def test_version_negotiation_accepts_wider_range(cluster: Cluster) -> None:
    """A newer peer that still speaks our version is accepted at the highest common version."""
    a = await cluster.add("a", [], coordinator=True)
    code, body = await _raw_heartbeat(
        cluster,
        a.url,
        json.dumps(
            _heartbeat(node_id="newer", protocol={"min": 1, "max": PROTOCOL_MAX + 5})
        ).encode(),
    )
    assert code == 200 and body["protocol"] == PROTOCOL_MAX
    assert registry_of(a).record("newer").protocol == PROTOCOL_MAX


async def test_member_reports_refusal_by_an_incompatible_coordinator(cluster: Cluster) -> None:
    """Negotiation from the member's side: a sidecar speaking only a newer protocol is
    refused with 409, says so in /readyz, and works again once the ranges overlap."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    identity = b.app[keys.IDENTITY]
    identity.protocol = ProtocolRange(min=PROTOCOL_MAX + 1, max=PROTOCOL_MAX + 2)

    async def refused() -> bool:
        code, body = await cluster.get(b.url + "/readyz")
        return code == 503 and "protocol mismatch" in body["reason"]

    await wait_for(refused, what="readyz to report the protocol refusal")
    identity.protocol = ProtocolRange(min=1, max=PROTOCOL_MAX + 2)

    async def accepted() -> bool:
        code, _body = await cluster.get(b.url + "/readyz")
        return code == 200

    await wait_for(accepted, what="readyz after the ranges overlap")
    assert registry_of(a).record("b").protocol == PROTOCOL_MAX


async def test_unchanged_registry_is_not_resent(cluster: Cluster) -> None:
    """A node that already holds the current registry gets a short 'unchanged' reply."""
    a = await cluster.add("a", ALICE, coordinator=True)
    code, first = await _raw_heartbeat(cluster, a.url, json.dumps(_heartbeat(node_id="q")).encode())
    assert code == 200 and first["unchanged"] is False and first["peers"]
    code, second = await _raw_heartbeat(
        cluster,
        a.url,
        json.dumps(_heartbeat(node_id="q", seq=2, known_registry=first["registry"])).encode(),
    )
    assert code == 200 and second["unchanged"] is True and second["peers"] == []


async def test_readyz_reports_daemon_down_with_reason(cluster: Cluster) -> None:
    """/livez stays 200 while /readyz says why the node is not ready."""
    a = await cluster.add("a", ALICE, coordinator=True)
    await cluster.stop_daemon(a)

    async def not_ready() -> bool:
        code, body = await cluster.get(a.url + "/readyz")
        return code == 503 and "daemon" in body["reason"]

    await wait_for(not_ready, what="readyz to report the daemon")
    code, _ = await cluster.get(a.url + "/livez")
    assert code == 200


async def test_unknown_cluster_route_is_json_404(cluster: Cluster) -> None:
    """Our own API answers JSON errors, even for unknown paths under /api/cluster/."""
    a = await cluster.add("a", [], coordinator=True)
    assert cluster.session is not None
    async with cluster.session.get(a.url + "/api/cluster/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"


async def test_sidecar_starts_beside_a_down_daemon_with_unroutable_agent_names(
    cluster: Cluster,
) -> None:
    """With the daemon down the roster comes from the workspace; an agent folder or roster
    entry whose name cannot be routed (a space, a ':') stays node-local, as it does when the
    daemon lists it, instead of stopping the sidecar from starting."""
    a = await cluster.add("a", [], coordinator=True)
    (cluster.tmp_path / "b" / "workspace" / "agents" / "my notes").mkdir(parents=True)
    b = await cluster.add(
        "b",
        [{"name": "ops:bot"}, {"name": "writer", "memory": {"read_policy": "shared"}}],
        coordinators=(a.url,),
        start_daemon=False,
    )
    snapshot = b.app[keys.WATCHER].snapshot
    assert not snapshot.healthy
    assert [x.id for x in snapshot.agents] == ["default", "writer"]
    status = await cluster.wait_states(a, {"b": "alive"})
    assert {r["agent_id"]: r["node_id"] for r in status["routes"]}["writer"] == "b"
