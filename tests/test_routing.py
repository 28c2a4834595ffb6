"""Agent routing: the sidecar serves the daemon's memory API and sends each request to the
agent's owner, in one hop, with the agent named on every cross-node request."""

from __future__ import annotations

import asyncio
import json

from sidecar import keys
from sidecar.membership.peers import HOP_HEADER
from sidecar.membership.view import ClusterView
from signet_cluster.protocol import AgentInfo, DaemonInfo, PeerView, RouteEntry

from .cluster_helpers import Cluster, Node
from .routing_helpers import (
    ALICE,
    CAROL,
    clear_requests,
    client,
    daemon_requests,
    db_rows,
    remember,
    two_nodes,
)

SERVED_BY = "x-signet-cluster-served-by"


async def test_recall_for_a_remote_agent_returns_the_owner_daemons_results(
    cluster: Cluster,
) -> None:
    """A recall sent to node a for carol (isolated, on b) is answered by b's daemon as
    carol: the same results b's daemon gives directly, and the response names b."""
    a, b = await two_nodes(cluster)
    mine = await remember(cluster, b.daemon_url, "carol keeps the deploy checklist", "carol")
    await remember(cluster, a.daemon_url, "alice also has a deploy checklist", "alice")
    body = {"query": "deploy checklist", "agentId": "carol"}
    code, via_a, headers = await client(cluster, "POST", a.url + "/api/memory/recall", body)
    assert code == 200, via_a
    assert [r["id"] for r in via_a["results"]] == [mine]
    assert headers[SERVED_BY] == "b"
    _, direct, _ = await client(cluster, "POST", b.daemon_url + "/api/memory/recall", body)
    assert [r["id"] for r in direct["results"]] == [mine]


async def test_remote_remember_lands_in_the_owners_database_only(cluster: Cluster) -> None:
    """carol's remember sent to a is stored by b's daemon under carol and never in a's
    database (both SQLite files are read)."""
    a, b = await two_nodes(cluster)
    mem_id = await remember(cluster, a.url, "carol prefers short standups", "carol")
    assert db_rows(b, "SELECT agent_id FROM memories WHERE id = ?", (mem_id,)) == [("carol",)]
    assert db_rows(a, "SELECT COUNT(*) FROM memories WHERE content LIKE '%short standups%'") == [
        (0,)
    ]


async def test_agent_id_is_on_every_cross_node_request(cluster: Cluster) -> None:
    """Whatever names the agent (body, session key in the body or a header, query), the
    owner's daemon receives the agent explicitly on every routed request."""
    a, b = await two_nodes(cluster)
    mem_id = await remember(cluster, b.daemon_url, "carol note one", "carol")
    await clear_requests(cluster, b)
    calls: list[tuple[str, str, object, dict[str, str]]] = [
        ("POST", "/api/memory/recall", {"query": "note", "sessionKey": "agent:carol:s1"}, {}),
        (
            "POST",
            "/api/memory/recall",
            {"query": "note"},
            {"x-signet-session-key": "agent:carol:s2"},
        ),
        (
            "POST",
            "/api/memory/remember",
            {"content": "via header"},
            {"x-signet-session-key": "agent:carol:s3"},
        ),
        ("GET", f"/api/memory/{mem_id}", None, {"x-signet-agent-id": "carol"}),
        ("POST", "/api/hooks/session-start", {"harness": "t", "sessionKey": "agent:carol:s4"}, {}),
    ]
    for method, path, body, headers in calls:
        code, answer, got = await client(cluster, method, a.url + path, body, headers=headers)
        assert code == 200, (path, answer)
        assert got[SERVED_BY] == "b"
    seen = await daemon_requests(cluster, b)
    assert len(seen) == len(calls)
    for request in seen:
        named = (request["body"] or {}).get("agentId") or request["query"].get("agentId")
        assert named == "carol", request
    assert not [r for r in await daemon_requests(cluster, a) if r["path"].startswith("/api/mem")]


async def test_auth_and_signet_headers_reach_the_owners_daemon(cluster: Cluster) -> None:
    """Authorization and the x-signet-* headers the daemon reads travel with the routed
    request; the cluster's own headers do not reach the daemon."""
    a, b = await two_nodes(cluster)
    await clear_requests(cluster, b)
    sent = {
        "Authorization": "Bearer daemon-token",
        "x-signet-actor": "ci-bot",
        "x-signet-actor-type": "harness",
        "x-signet-request-id": "req-42",
        "x-signet-runtime-path": "plugin",
        "x-signet-no-hooks": "1",
    }
    code, answer, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        {"content": "headers travel", "agentId": "carol"},
        headers=sent,
    )
    assert code == 200, answer
    [received] = await daemon_requests(cluster, b)
    for name, value in sent.items():
        assert received["headers"][name.lower()] == value
    assert not [h for h in received["headers"] if h.startswith("x-signet-cluster-")]


async def test_default_unknown_and_local_agents_stay_on_the_local_daemon(
    cluster: Cluster,
) -> None:
    """`default`, an agent nobody claims and a local agent are served by the node's own
    daemon; nothing reaches the other node."""
    a, b = await two_nodes(cluster)
    await clear_requests(cluster, b)
    for agent in (None, "nobody-claims-me", "alice"):
        mem_id = await remember(cluster, a.url, f"note for {agent}", agent)
        assert db_rows(a, "SELECT agent_id FROM memories WHERE id = ?", (mem_id,)) == [
            (agent or "default",)
        ]
    assert await daemon_requests(cluster, b) == []


def _view(source: str, owner: PeerView) -> ClusterView:
    return ClusterView(
        source=source,
        coordinator_id="x",
        registry="stale:1",
        peers=(owner,),
        routes=(
            RouteEntry(
                agent_id="zed", node_id=owner.node_id, url=owner.url, read_policy="isolated"
            ),
        ),
        collisions=(),
        coordinators=(),
        received_at=0.0,
    )


def _peer(node: Node) -> PeerView:
    return PeerView(
        node_id=node.name,
        url=node.url,
        state="alive",
        joined=False,
        coordinator=False,
        protocol=1,
        sidecar_version="0",
        instance_id="i",
        daemon=DaemonInfo(flavor="ts", healthy=True),
        agents=(AgentInfo(id="zed", read_policy="isolated"),),
        last_seen_age_s=0.0,
    )


async def test_stale_tables_on_two_nodes_never_loop(cluster: Cluster) -> None:
    """x believes zed lives on y and y believes it lives on x (both tables stale, neither
    owns zed): a write sent to x takes exactly one hop to y, which refuses it (421) instead
    of sending it back; neither daemon stores anything."""
    x = await cluster.add("x", [])
    y = await cluster.add("y", [])
    x.app[keys.MEMBERSHIP].views["stale"] = _view("stale", _peer(y))
    y.app[keys.MEMBERSHIP].views["stale"] = _view("stale", _peer(x))
    code, answer, headers = await client(
        cluster, "POST", x.url + "/api/memory/remember", {"content": "loop?", "agentId": "zed"}
    )
    assert code == 421 and answer["code"] == "misrouted" and answer["node"] == "y"
    assert "Retry-After" in headers
    for node in (x, y):
        assert db_rows(node, "SELECT COUNT(*) FROM memories") == [(0,)]
        assert [r for r in await daemon_requests(cluster, node) if "memory" in r["path"]] == []


async def test_a_hop_request_is_never_routed_again(cluster: Cluster) -> None:
    """A request already marked as routed is served by this node's daemon only when this
    node owns the agent; a's sidecar refuses one for carol instead of forwarding it to b."""
    a, b = await two_nodes(cluster)
    await clear_requests(cluster, b)
    hop = {HOP_HEADER: "b", "Content-Type": "application/json"}
    status, body, _ = await cluster.request(
        "POST",
        a.url + "/api/memory/remember",
        data=b'{"content":"x","agentId":"carol"}',
        headers=hop,
        signer=cluster.signer_for("b"),  # a hop comes from a sidecar
    )
    assert status == 421 and body["code"] == "misrouted"
    status, body, _ = await cluster.request(
        "POST",
        a.url + "/api/memory/remember",
        data=b'{"content":"alice via hop","agentId":"alice"}',
        headers=hop,
        signer=cluster.signer_for("b"),  # a hop comes from a sidecar
    )
    assert status == 200
    assert db_rows(a, "SELECT agent_id FROM memories WHERE id = ?", (body["id"],)) == [("alice",)]
    assert await daemon_requests(cluster, b) == []


async def test_modify_and_forget_of_another_agents_memory_are_refused(cluster: Cluster) -> None:
    """On a TS daemon (which does not scope modify/forget), carol cannot modify, forget,
    PATCH or DELETE bob's memory through the cluster: 403 naming the ids, nothing changed;
    her own memory is modified normally."""
    a, b = await two_nodes(cluster)
    bobs = await remember(cluster, b.daemon_url, "bob owns this fact", "bob")
    carols = await remember(cluster, b.daemon_url, "carol owns this fact", "carol")
    refused = [
        (
            "POST",
            "/api/memory/modify",
            {"agentId": "carol", "patches": [{"id": bobs, "content": "hijacked", "reason": "x"}]},
            {},
        ),
        (
            "POST",
            "/api/memory/forget",
            {"agentId": "carol", "mode": "execute", "ids": [bobs], "reason": "x"},
            {},
        ),
        (
            "PATCH",
            f"/api/memory/{bobs}",
            {"content": "hijacked", "reason": "x"},
            {"x-signet-agent-id": "carol"},
        ),
        ("DELETE", f"/api/memory/{bobs}?reason=x", None, {"x-signet-agent-id": "carol"}),
    ]
    for method, path, body, headers in refused:
        for node in (a, b):
            code, answer, _ = await client(cluster, method, node.url + path, body, headers=headers)
            assert code == 403, (node.name, path, answer)
            assert answer["ids"] == [bobs] and "error" in answer
    assert db_rows(b, "SELECT content, is_deleted FROM memories WHERE id = ?", (bobs,)) == [
        ("bob owns this fact", 0)
    ]
    ok = {"agentId": "carol", "patches": [{"id": carols, "content": "carol edited", "reason": "r"}]}
    code, answer, _ = await client(cluster, "POST", a.url + "/api/memory/modify", ok)
    assert code == 200 and answer["updated"] == 1, answer
    code, answer, _ = await client(
        cluster, "POST", a.url + "/api/memory/forget", {"agentId": "carol", "query": "fact"}
    )
    assert code == 400 and answer["code"] == "agent_scope_requires_ids"


async def test_daemon_error_shapes_come_back_unchanged(cluster: Cluster) -> None:
    """Malformed JSON (even nested too deep to decode), a missing query and an unknown
    agent get the daemon's own answers (status and body) through the sidecar, not a
    sidecar error."""
    a = await cluster.add("a", [ALICE, CAROL], coordinator=True)
    cases = [
        ("POST", "/api/memory/recall", b"{not json", {"Content-Type": "application/json"}),
        ("POST", "/api/memory/remember", b"{}", {"Content-Type": "application/json"}),
        ("POST", "/api/memory/recall", b'{"limit":3}', {"Content-Type": "application/json"}),
        ("GET", "/api/agents/nobody", b"", {}),
        ("GET", "/api/memory/no-such-id?agentId=ghost", b"", {}),
        # Nested deeper than Python's JSON decoder recurses: still the daemon's answer.
        ("POST", "/api/memory/recall", b'{"query":' + b"[" * 100_000, {}),
    ]
    for method, path, data, headers in cases:
        direct = await client(cluster, method, a.daemon_url + path, raw=data, headers=headers)
        routed = await client(cluster, method, a.url + path, raw=data, headers=headers)
        assert routed[:2] == direct[:2], path
        assert routed[2]["Content-Type"] == direct[2]["Content-Type"]


async def test_a_trickled_memory_request_body_gets_408(cluster: Cluster) -> None:
    """A client that sends a memory request's headers but not its whole body is answered
    408 (the daemon's error shape) after body_timeout, on the memory API and on a
    passed-through path alike, instead of holding the sidecar's handler open."""
    a = await cluster.add("a", [ALICE], coordinator=True, body_timeout=0.3)
    assert a.settings is not None
    for path in ("/api/memory/recall", "/api/documents"):
        reader, writer = await asyncio.open_connection("127.0.0.1", a.settings.port)
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                'Content-Length: 100\r\n\r\n{"query'.encode()
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 5)
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), (path, answer[:80])
        assert json.loads(body)["code"] == "body_timeout"
    code, _, _ = await client(cluster, "POST", a.url + "/api/memory/recall", {"query": "x"})
    assert code == 200


async def test_a_client_that_sends_expect_100_continue_gets_the_daemons_answer(
    cluster: Cluster,
) -> None:
    """A client sending `Expect: 100-continue` (curl does for large bodies) gets the
    interim 100 and then the daemon's real answer, and the next request on the sidecar's
    kept daemon connection gets its own answer, not that one."""
    a = await cluster.add("a", [ALICE], coordinator=True)
    assert a.settings is not None
    await remember(cluster, a.url, "expect continue note")
    body = b'{"query": "expect"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", a.settings.port)
    try:
        writer.write(
            b"POST /api/memory/recall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    interim, _, final = answer.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue", answer[:80]
    head, _, payload = final.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), final[:80]
    assert [hit["content"] for hit in json.loads(payload)["results"]] == ["expect continue note"]
    code, answer_json, _ = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": "the next request"}
    )
    assert code == 200 and answer_json["content"] == "the next request", answer_json


async def test_a_remember_lands_the_same_whichever_node_receives_it(cluster: Cluster) -> None:
    """A body `sessionKey` does not name a remember's agent on the daemon, so it does not
    route either: sent to a or to b, the memory is the receiving daemon's `default` one;
    the session-key *header* does name the agent and goes to its owner from anywhere."""
    a, b = await two_nodes(cluster)
    for node, text in ((a, "body key sent to a"), (b, "body key sent to b")):
        code, body, _ = await client(
            cluster,
            "POST",
            node.url + "/api/memory/remember",
            {"content": text, "sessionKey": "agent:carol:s1"},
        )
        assert code == 200, body
        rows = db_rows(node, "SELECT agent_id FROM memories WHERE content = ?", (text,))
        assert rows == [("default",)]
    code, body, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        {"content": "header key sent to a"},
        headers={"x-signet-session-key": "agent:carol:s2"},
    )
    assert code == 200, body
    rows = db_rows(b, "SELECT agent_id FROM memories WHERE content = ?", ("header key sent to a",))
    assert rows == [("carol",)]
