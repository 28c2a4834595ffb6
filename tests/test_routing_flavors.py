"""One client body for every daemon flavor: the serving sidecar adapts requests where the TS,
TS-legacy and Rust daemons differ (recall filter names, modify patch shape, Rust's active
session rule for non-default-agent writes, modify/forget agent scoping)."""

from __future__ import annotations

import pytest

from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app

from .cluster_helpers import Cluster, Node, TestServer
from .routing_helpers import ALICE, CAROL, client, daemon_requests, db_rows, wait_routes


async def _nodes(cluster: Cluster, flavor: str) -> tuple[Node, Node]:
    """Entry `a` (ts) and `b` of `flavor` holding carol; on a legacy daemon (no agents)
    carol is no node's agent, so the client talks to b itself."""
    a = await cluster.add("a", [ALICE], coordinator=True)
    b = await cluster.add("b", [CAROL], coordinators=(a.url,), flavor=flavor)
    if flavor == "ts-legacy":
        await cluster.wait_states(a, {"a": "alive", "b": "alive"})
        return b, b
    await wait_routes(cluster, a, {"carol": ("remote", "b")})
    return a, b


@pytest.mark.parametrize("flavor", ["ts", "ts-legacy", "rust"])
async def test_the_same_client_calls_work_on_every_flavor(cluster: Cluster, flavor: str) -> None:
    """remember (non-default agent), recall with `importance_min`, modify with a flat patch
    and forget by id: the same bodies succeed on ts, ts-legacy and rust, and b's database
    shows the effect of each."""
    entry, b = await _nodes(cluster, flavor)
    url = entry.url
    code, saved, _ = await client(
        cluster,
        "POST",
        url + "/api/memory/remember",
        {"content": "Carol prefers tea over coffee", "agentId": "carol", "importance": 0.9},
    )
    assert code == 200, saved
    mem_id = saved["id"]
    recall = {"query": "tea", "agentId": "carol", "importance_min": 0.5}
    code, found, _ = await client(cluster, "POST", url + "/api/memory/recall", recall)
    assert code == 200 and [r["id"] for r in found["results"]] == [mem_id], found
    # The filter really reaches the daemon in its own spelling: nothing is that important.
    code, none, _ = await client(
        cluster, "POST", url + "/api/memory/recall", recall | {"importance_min": 0.95}
    )
    assert code == 200 and none["results"] == [], none
    patch = {
        "agentId": "carol",
        "patches": [{"id": mem_id, "content": "Carol prefers green tea", "reason": "update"}],
    }
    code, modified, _ = await client(cluster, "POST", url + "/api/memory/modify", patch)
    assert code == 200 and modified["updated"] == 1, modified
    forget = {"agentId": "carol", "mode": "execute", "ids": [mem_id], "reason": "cleanup"}
    code, forgot, _ = await client(cluster, "POST", url + "/api/memory/forget", forget)
    assert code == 200 and forgot["deleted"] == 1, forgot
    owner = "default" if flavor == "ts-legacy" else "carol"
    columns = "content, is_deleted" + (", agent_id" if flavor != "ts-legacy" else "")
    row = db_rows(b, f"SELECT {columns} FROM memories WHERE id = ?", (mem_id,))
    expected = ("Carol prefers green tea", 1) + ((owner,) if flavor != "ts-legacy" else ())
    assert row == [expected]


async def test_rust_writes_get_an_active_session_opened_for_them(cluster: Cluster) -> None:
    """A Rust daemon refuses a non-default agent's remember without an active agent session;
    the owner's sidecar opens one (once) and the write lands under carol; a session key the
    client sends but never opened is replaced by the sidecar's own."""
    a, b = await _nodes(cluster, "rust")
    for n in range(2):
        code, saved, _ = await client(
            cluster,
            "POST",
            a.url + "/api/memory/remember",
            {
                "content": f"carol rust note {n}",
                "agentId": "carol",
                "sessionKey": f"agent:carol:never-opened-{n}",
            },
        )
        assert code == 200, saved
        assert db_rows(b, "SELECT agent_id FROM memories WHERE id = ?", (saved["id"],)) == [
            ("carol",)
        ]
    starts = [
        r for r in await daemon_requests(cluster, b) if r["path"] == "/api/hooks/session-start"
    ]
    assert len(starts) == 1 and starts[0]["body"]["agentId"] == "carol"


async def test_rust_search_for_a_named_agent_reads_as_that_agent(cluster: Cluster) -> None:
    """Rust's GET /api/memory/search has no agent parameter; for a named agent the owner's
    sidecar asks the equivalent recall, so carol's own private memory is found."""
    a, b = await _nodes(cluster, "rust")
    code, saved, _ = await client(
        cluster,
        "POST",
        a.url + "/api/memory/remember",
        {"content": "carol private rust detail", "agentId": "carol", "visibility": "private"},
    )
    assert code == 200, saved
    code, found, _ = await client(
        cluster, "GET", a.url + "/api/memory/search?q=detail&agentId=carol"
    )
    assert code == 200 and [r["id"] for r in found["results"]] == [saved["id"]], found
    code, direct, _ = await client(cluster, "GET", b.daemon_url + "/api/memory/search?q=detail")
    assert direct["results"] == []  # the daemon alone reads as default


async def test_a_rust_daemon_restart_does_not_strand_writes_that_carry_a_client_key(
    cluster: Cluster,
) -> None:
    """After the Rust daemon restarts (every session gone, the sidecar's own included), a
    write that carries a client session key nobody opened still lands: the sidecar
    notices its own session is gone too and opens it again."""
    a, b = await _nodes(cluster, "rust")
    body = {"content": "carol before restart", "agentId": "carol", "sessionKey": "agent:carol:x"}
    code, saved, _ = await client(cluster, "POST", a.url + "/api/memory/remember", body)
    assert code == 200, saved
    assert b.daemon_server is not None
    port = b.daemon_server.port
    await cluster.stop_daemon(b)
    app = make_devdaemon_app(DevDaemonConfig(path=b.workspace, flavor="rust"))
    b.daemon_server = TestServer(app, host="127.0.0.1", port=port)
    await b.daemon_server.start_server()
    body = body | {"content": "carol after restart", "sessionKey": "agent:carol:y"}
    code, saved, _ = await client(cluster, "POST", a.url + "/api/memory/remember", body)
    assert code == 200, saved
    assert db_rows(b, "SELECT agent_id FROM memories WHERE id = ?", (saved["id"],)) == [("carol",)]
