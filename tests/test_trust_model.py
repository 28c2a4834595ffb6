"""Issue 12, against running sidecars: no credential reaches beyond its role. Each test
replays one break found by the adversarial review and shows it no longer works."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from cli.main import cli
from sidecar import keys
from signet_cluster.security.signing import sign_reply

from .cluster_helpers import TEST_SECRET, Cluster, free_port, registry_of, wait_for
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


async def test_a_node_key_cannot_change_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """Roles: a request signed with the cluster key (a node credential) cannot join,
    remove, adopt, promote or demote, or change a member's coordinators (403 naming the
    admin credential); the CLI holding only the cluster key says the same; the admin key
    can."""
    a, b = await two_nodes(cluster)
    node = cluster.signer_for("b")
    attempts = [
        ("POST", a.url + "/api/cluster/promote", {"coordinator": False}),
        ("POST", b.url + "/api/cluster/promote", {"coordinator": True}),
        ("DELETE", a.url + "/api/cluster/peers/b", None),
        ("POST", a.url + "/api/cluster/adopt", {"agent_id": "bob", "node_id": "b"}),
        ("POST", a.url + "/api/cluster/join", {"address": b.url}),
        ("POST", b.url + "/api/cluster/coordinators", {"remove": [a.url]}),
        ("POST", a.url + "/api/cluster/admin", {"adoptions": []}),
    ]
    for method, url, body in attempts:
        code, answer = await cluster._json(method, url, body, True, signer=node)
        assert code == 403 and answer["reason"] == "role", (url, answer)
    assert a.app[keys.IDENTITY].coordinator and not b.app[keys.IDENTITY].coordinator
    assert b.app[keys.MEMBERSHIP].targets() == [a.url]
    secret = tmp_path / "cluster.secret"
    secret.write_text(TEST_SECRET)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["--sidecar", b.url, "--secret-file", str(secret), "promote"],
        env={"SIGNET_CLUSTER_ADMIN_KEY": ""},
    )
    assert result.exit_code != 0 and "admin credential" in result.output, result.output
    assert not b.app[keys.IDENTITY].coordinator
    code, answer = await cluster.post(b.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 200 and b.app[keys.IDENTITY].coordinator, answer


async def test_a_viewer_token_reads_and_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """A viewer token (viewer_token_file) from another host reads status, routes, resolve,
    /cluster and /metrics; it cannot join, promote or adopt, nor read or write memories."""
    token_file = tmp_path / "viewer.token"
    token_file.write_text("viewer-token-0123456789abcdef\n")
    a = await cluster.add("a", [ALICE], coordinator=True, viewer_token_file=str(token_file))
    a.app[keys.AUTH].peer_override = OUTSIDER
    viewer = {"Authorization": "Bearer viewer-token-0123456789abcdef"}
    for path in (
        "/api/cluster/status",
        "/api/cluster/routes",
        "/api/cluster/resolve?agent_id=alice",
        "/cluster",
        "/metrics",
    ):
        code, _answer, _ = await cluster.request("GET", a.url + path, headers=viewer, signed=False)
        assert code == 200, path
    for path, body in (
        ("/api/cluster/promote", {"coordinator": False}),
        ("/api/cluster/adopt", {"agent_id": "alice", "node_id": "a"}),
        ("/api/memory/recall", {"query": "x", "agentId": "alice"}),
        ("/api/memory/remember", {"content": "by a viewer", "agentId": "alice"}),
    ):
        code, answer = await cluster.post(a.url + path, body, signed=False, headers=viewer)
        assert code == 401, (path, answer)
    assert a.app[keys.IDENTITY].coordinator
    code, _answer, _ = await cluster.request(
        "GET",
        a.url + "/api/cluster/status",
        headers={"Authorization": "Bearer not-the-viewer-token-000"},
        signed=False,
    )
    assert code == 401


async def test_a_node_key_cannot_make_itself_a_coordinator(cluster: Cluster) -> None:
    """Rogue coordinator: a key holder heartbeating with `coordinator: true` is not listed
    as a coordinator, so no member starts heartbeating to it; a sidecar holding the
    coordinator key and promoted by the admin is."""
    a, b = await two_nodes(cluster)
    rogue_url = f"http://127.0.0.1:{free_port()}"
    beat = forged_heartbeat("rogue", rogue_url, [], coordinator=True)
    code, body = await cluster.post(
        a.url + "/api/cluster/heartbeat", beat, signer=cluster.signer_for("rogue")
    )
    assert code == 200, body
    assert rogue_url not in body["coordinators"]
    status = await cluster.status(a)
    assert rogue_url not in status["coordinators"]
    assert not next(n for n in status["nodes"] if n["node_id"] == "rogue")["coordinator"]
    code, answer = await cluster.post(b.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 200, answer

    async def b_listed() -> bool:
        return b.url in (await cluster.status(a))["coordinators"]

    await wait_for(b_listed, what="the promoted coordinator listed")
    assert rogue_url not in b.app[keys.MEMBERSHIP].targets()


async def test_a_member_takes_routes_only_from_a_signed_reply(cluster: Cluster) -> None:
    """A forged heartbeat reply (from a server at a coordinator's address, signed with the
    cluster key or not at all) routing alice elsewhere is refused: the member keeps its
    routes and reports the coordinator's reply as not trusted."""
    _a, b = await two_nodes(cluster)
    evil_url = f"http://127.0.0.1:{free_port()}"
    forged_keys: list[bool] = []

    async def forged(request: web.Request) -> web.Response:
        reply = {
            "protocol": 1,
            "coordinator_id": "a",
            "registry": "forged:1",
            "ttl_s": 5.0,
            "routes": [
                {"agent_id": "alice", "node_id": "evil", "url": evil_url, "read_policy": "shared"}
            ],
            "coordinators": [],
        }
        raw = json.dumps(reply).encode()
        headers: dict[str, str] = {}
        nonce = request.headers.get("x-signet-cluster-nonce")
        if nonce and len(forged_keys) % 2:
            headers = sign_reply(
                request_nonce=nonce,
                node_id="a",
                status=200,
                body_digest=hashlib.sha256(raw).hexdigest(),
                role_key=None,
                keyring=cluster.keyring,
            )
        forged_keys.append(True)
        return web.Response(body=raw, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_post("/api/cluster/heartbeat", forged)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        fake = str(server.make_url("")).rstrip("/")
        await b.app[keys.MEMBERSHIP].add((fake,))

        async def refused_twice() -> bool:
            contact = b.app[keys.MEMBERSHIP].contact(fake)
            return len(forged_keys) >= 2 and "not trusted" in (contact.error or "")

        await wait_for(refused_twice, what="the forged replies refused")
        assert fake not in b.app[keys.MEMBERSHIP].views
        routes = await routes_of(cluster, b)
        assert routes["alice"]["owner"]["node_id"] == "a"
    finally:
        await server.close()


async def test_a_signed_hop_cannot_be_redirected_to_another_agent(cluster: Cluster) -> None:
    """Unsigned headers: an on-path attacker changing a signed hop's agent headers (bob to
    alice) or adding a session key makes the owner refuse it (401 bad_signature); the hop
    as signed is served."""
    a, b = await two_nodes(cluster)
    await remember(cluster, b.url, "carol's private recipe", "carol")
    body = json.dumps({"query": "recipe", "agentId": "bob"}).encode()
    sent = {
        "Content-Type": "application/json",
        "x-signet-cluster-hop": "a",
        "x-signet-cluster-agent": "bob",
    }
    b_host = b.url.split("//")[1]
    signed = cluster.signer_for("a").headers("POST", b_host, "/api/memory/recall", body, sent)
    tampered = [
        {"x-signet-cluster-agent": "carol"},
        {"x-signet-agent-id": "carol"},
        {"x-signet-session-key": "agent:carol:s1"},
        {"Authorization": "Bearer whatever-token"},
    ]
    for change in tampered:
        headers = {**sent, **signed, **change, "Host": b_host}
        code, answer, _ = await cluster.request(
            "POST", b.url + "/api/memory/recall", data=body, headers=headers, signed=False
        )
        assert code == 401 and answer["reason"] == "bad_signature", (change, answer)
        assert "recipe" not in json.dumps(answer)
    code, answer, _ = await cluster.request(
        "POST",
        b.url + "/api/memory/recall",
        data=body,
        headers={**sent, **signed, "Host": b_host},
        signed=False,
    )
    assert code == 200, answer
    del a


async def test_a_new_coordinator_learns_who_held_an_agent_first(cluster: Cluster) -> None:
    """Claims are replicated: a coordinator started after the owner's claim, which hears
    the attacker's claim before the owner's, still routes the agent to the first holder."""
    a = await cluster.add("a", [], coordinator=True)
    n = await cluster.add("n", [BOB], coordinators=(a.url,))
    await cluster.wait_states(a, {"n": "alive"})
    beat = forged_heartbeat("aaa-evil", f"http://127.0.0.1:{free_port()}", ["bob"])
    code, body = await cluster.post(
        a.url + "/api/cluster/heartbeat", beat, signer=cluster.signer_for("aaa-evil")
    )
    assert code == 200, body
    b = await cluster.add("b", [], coordinator=True, coordinators=(a.url,))
    beat["sent_at"] = time.time()
    code, body = await cluster.post(
        b.url + "/api/cluster/heartbeat", beat, signer=cluster.signer_for("aaa-evil")
    )
    assert code == 200, body

    async def b_routes_bob_to_n() -> bool:
        routes = {r.agent_id: r.node_id for r in registry_of(b).routing()[0]}
        return routes.get("bob") == "n"

    await wait_for(b_routes_bob_to_n, what="b to route bob to its first holder")
    (collision,) = registry_of(b).routing()[1]
    assert collision.winner == "n" and collision.rule == "first_claim"
    del n
