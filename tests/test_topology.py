"""The /cluster page's server side: the topology document and the page's own files."""

from __future__ import annotations

import re
from importlib import resources

from sidecar.ops.topology import spool_text, topology
from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
OPS = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]


async def test_topology_document_from_any_node(cluster: Cluster) -> None:
    """/api/cluster/topology, asked of a member, carries the coordinator's view: every node
    with state, role, daemon and heartbeat age; agents with policy, group and collision
    flags (the losing claimant marked not owner); groups; problems; a refresh interval."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", [*ALICE, *OPS], coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    code, doc = await cluster.get(b.url + "/api/cluster/topology")
    assert code == 200
    assert doc["answered_by"] == "a" and doc["asked"] == "b" and doc["source"] == "registry"
    assert doc["refresh_s"] == 0.25  # heartbeat_interval 0.1 s, clamped
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert nodes["a"]["coordinator"] is True and nodes["b"]["coordinator"] is False
    assert nodes["b"]["daemon"] == {
        "flavor": "ts",
        "version": "0.145.7",
        "healthy": True,
        "error": None,
    }
    assert isinstance(nodes["b"]["heartbeat_age_s"], float)
    assert "spool" in nodes["b"]
    agents = {(n, x["id"]): x for n in nodes for x in nodes[n]["agents"]}
    # alice is claimed by both nodes; both daemons report the same created_at rules: one owner.
    assert agents["a", "alice"]["collision"] and agents["b", "alice"]["collision"]
    assert agents["a", "alice"]["owner"] != agents["b", "alice"]["owner"]
    assert agents["b", "carol"] == {
        "id": "carol",
        "read_policy": "group",
        "policy_group": "ops",
        "collision": False,
        "owner": True,
        "routable": True,
    }
    assert doc["groups"] == {"ops": [{"agent_id": "carol", "node_id": "b"}]}
    assert [c["agent_id"] for c in doc["collisions"]] == ["alice"]
    assert any("agent alice is claimed by a, b" in p for p in doc["problems"])


async def test_page_and_assets_are_served_self_contained(cluster: Cluster) -> None:
    """/cluster is HTML with a strict same-origin CSP, its script and style come from the
    sidecar, nothing refers to another host (works offline), and unknown assets are 404."""
    a = await cluster.add("a", ALICE, coordinator=True)
    assert cluster.session is not None
    async with cluster.session.get(a.url + "/cluster") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        html = await resp.text()
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        async with cluster.session.get(a.url + src) as resp:
            assert resp.status == 200, src
    async with cluster.session.get(a.url + "/cluster/static/../cluster.html") as resp:
        assert resp.status == 404
    async with cluster.session.get(a.url + "/cluster/static/nope.js") as resp:
        assert resp.status == 404
    for name in ("cluster.html", "cluster.js", "cluster.css"):
        text = resources.files("sidecar.ops.static").joinpath(name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name
        assert "innerHTML" not in text, name  # cluster data is inserted as text only


def test_node_spool_is_shown_with_the_age_of_its_oldest_write() -> None:
    """A node's spool, as its heartbeat reports it (oldest write as a wall-clock time),
    becomes depth, bytes, dead letters and the oldest write's age at generation time."""
    status = {
        "nodes": [
            {
                "node_id": "a",
                "state": "alive",
                "agents": [],
                "daemon": {"flavor": "ts", "healthy": True},
                "spool": {"depth": 2, "bytes": 300, "oldest_at": 990.0, "dead_letters": 1},
            },
            {"node_id": "b", "state": "down", "agents": [], "daemon": {}},
        ],
    }
    doc = topology(status, refresh_s=1.0, generated_at=1000.0)
    spools = {n["node_id"]: n["spool"] for n in doc["nodes"]}
    assert spools == {
        "a": {"depth": 2, "bytes": 300, "dead_letters": 1, "oldest_age_s": 10.0, "owners": []},
        "b": None,
    }
    assert doc["problems"] == ["node b is down"]


async def test_the_first_paint_is_rendered_by_the_sidecar(cluster: Cluster) -> None:
    """/cluster arrives with the cluster in it (no JavaScript needed): problems first, a
    card per node with its membership badge, a down node's agents marked not routable,
    and recent events (the node that went down)."""
    clock = ManualClock()
    a = await cluster.add("a", ALICE, coordinator=True, clock=clock)
    c = await cluster.add(
        "c", [{"name": "carol", "memory": {"read_policy": "shared"}}], coordinators=(a.url,)
    )
    await cluster.wait_states(a, {"c": "alive"})
    await cluster.stop_sidecar(c)
    assert a.settings is not None
    clock.advance(a.settings.ttl + 0.5)
    # a's own next heartbeat brings it back after the jump of its clock.
    await cluster.wait_states(a, {"c": "down", "a": "alive"})
    assert cluster.session is not None
    async with cluster.session.get(a.url + "/cluster") as resp:
        html = await resp.text()
    assert "{{" not in html
    assert html.index('id="problems"') < html.index('id="nodes"')
    assert "node c is down" in html
    assert 'data-node-id="a"' in html and 'data-node-id="c"' in html
    assert "discovered</span>" in html
    carol = re.search(r'<span [^>]*data-agent="carol"[^>]*>', html)
    assert carol is not None and 'data-routable="no"' in carol.group(0)
    alice = re.search(r'<span [^>]*data-agent="alice"[^>]*>', html)
    assert alice is not None and "data-routable" not in alice.group(0)
    assert "c went down" in html


def test_the_spool_says_which_owners_it_waits_for() -> None:
    """The page's spool line names the owner nodes the waiting writes are for."""
    spool = {"depth": 3, "bytes": 10, "dead_letters": 0, "oldest_age_s": 5.0, "owners": ["b", "c"]}
    assert spool_text(spool) == "3 waiting for b, c, oldest 5 s"
