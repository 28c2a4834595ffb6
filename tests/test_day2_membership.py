"""Day-2 membership: removal acts on node identity, a removed node is not ready, and a
coordinator restart does not silently lose a host that stopped heartbeating."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar import keys
from sidecar.membership.identity import default_node_id
from signet_cluster import settings as settings_module
from signet_cluster.settings import Settings

from .cluster_helpers import Cluster, wait_for

BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": "shared"}}]


async def test_remove_of_a_stale_id_leaves_the_live_node_at_its_url_alone(
    cluster: Cluster,
) -> None:
    """Host c restarts under a new node id (another state dir) at the same URL. Removing
    the stale id tells only the node with that id: the live node answers `wrong_node`,
    keeps heartbeating and stays ready; the answer says it was left alone."""
    a = await cluster.add("a", [], coordinator=True)
    c = await cluster.add("c", CAROL, coordinators=(a.url,))
    await cluster.wait_states(a, {"c": "alive"})
    await cluster.stop_sidecar(c)
    await cluster.start_sidecar(c, node_id="c-new", state_dir=str(c.state_dir) + "-unit")
    await cluster.wait_states(a, {"c-new": "alive"})

    code, body = await cluster.delete(a.url + "/api/cluster/peers/c")
    assert code == 200 and body["removed"] is True and body["node_id"] == "c", body
    assert "left alone" in (body["warning"] or ""), body
    membership = c.app[keys.MEMBERSHIP]
    assert membership.removed_by is None
    assert a.url in membership.targets()
    _code, ready = await cluster.get(c.url + "/readyz")
    assert ready["ready"] is True, ready
    await cluster.wait_states(a, {"c-new": "alive"})


async def test_a_removed_node_is_not_ready_and_warns(cluster: Cluster) -> None:
    """The node a removal is addressed to stops heartbeating, logs a warning, and /readyz
    is 503 naming the removal until `join` adds it back."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    with capture_logs() as logs:
        code, _ = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 200
    warned = {e["event"] for e in logs if e["log_level"] == "warning"}
    assert {"node_removed", "peer_removed"} <= warned, logs
    code, ready = await cluster.get(b.url + "/readyz")
    assert code == 503 and ready["ready"] is False
    assert "removed from the cluster" in ready["reason"]
    # Kept across a restart of the removed node.
    await cluster.stop_sidecar(b)
    await cluster.start_sidecar(b, coordinators=())
    code, ready = await cluster.get(b.url + "/readyz")
    assert code == 503 and "removed" in ready["reason"], ready
    code, _ = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 200
    await cluster.wait_states(a, {"b": "alive"})
    code, ready = await cluster.get(b.url + "/readyz")
    assert code == 200 and ready["ready"] is True, ready


async def test_a_host_that_vanished_while_the_coordinator_was_away_is_listed_down(
    cluster: Cluster,
) -> None:
    """A discovered node (not joined) that stops heartbeating while the coordinator is
    restarted is listed as down afterwards, not silently missing from status."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})

    async def saved() -> bool:
        return "b" in (await a.app[keys.STATE].meta("seen_nodes") or "")

    await wait_for(saved, what="the coordinator to persist the nodes it knows")
    await cluster.stop_sidecar(a)
    await cluster.stop_sidecar(b)
    await cluster.start_sidecar(a)
    status = await cluster.wait_states(a, {"b": "down"})
    assert {n["node_id"]: n["url"] for n in status["nodes"]}["b"] == b.url


def test_the_default_node_id_is_the_short_host_name() -> None:
    """A node without a configured id takes its host's short name (a valid node id), so a
    new state dir on the same host is the same node; no usable name gives a random id."""
    assert default_node_id("Host-C.example.org") == "host-c"
    assert default_node_id("my host_1") == "my-host_1"
    assert default_node_id("localhost").startswith("node-")
    assert default_node_id("...").startswith("node-")


async def test_a_sidecar_without_node_id_is_named_after_its_host(cluster: Cluster) -> None:
    """Two state dirs on one host give one node id (the host name), not two nodes."""
    a = await cluster.add("a", [], node_id=None)
    assert a.app[keys.IDENTITY].node_id == default_node_id()
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a, state_dir=str(a.state_dir) + "-other")
    assert a.app[keys.IDENTITY].node_id == default_node_id()


def test_the_system_state_dir_is_the_default_when_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Foreground `serve` and the system unit share one state dir when the unit's exists
    and this user may write it; otherwise the per-user XDG dir."""
    system = tmp_path / "var-lib-signet-cluster"
    monkeypatch.setattr(settings_module, "SYSTEM_STATE_DIR", str(system))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Settings().state_path == tmp_path / "xdg" / "signet-cluster"
    system.mkdir()
    assert Settings().state_path == system
    assert Settings(state_dir=str(tmp_path / "mine")).state_path == tmp_path / "mine"
