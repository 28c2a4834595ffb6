"""Several coordinators, failover, failsafe routing, run-time promotion, and operator
decisions (join, adopt) replicated to every coordinator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from sidecar import keys
from sidecar.membership.coordinator import COORDINATOR
from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, Node, registry_of, wait_for

BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
DAVE = [{"name": "dave", "memory": {"read_policy": "shared"}}]


async def local_routes(cluster: Cluster, node: Node) -> dict[str, str]:
    _code, body = await cluster.get(node.url + "/api/cluster/status?local=1")
    return {r["agent_id"]: r["node_id"] for r in body["routes"]}


async def two_coordinators(cluster: Cluster) -> tuple[Node, Node, Node, Node]:
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", [], coordinator=True, coordinators=(a.url,))
    # c and d only know a; they must learn b from a's replies.
    c = await cluster.add("c", BOB, coordinators=(a.url,))
    d = await cluster.add("d", DAVE, coordinators=(a.url,))
    await cluster.wait_states(a, {n: "alive" for n in "abcd"})
    await cluster.wait_states(b, {n: "alive" for n in "abcd"})

    async def converged() -> bool:
        # Every member holds a current copy of both registries.
        views = [v for m in (c, d) for v in m.app[keys.MEMBERSHIP].views.values()]
        return len(views) == 4 and all(len(v.peers) == 4 for v in views)

    await wait_for(converged, what="members to hold both registries")
    return a, b, c, d


async def test_members_learn_every_coordinator_and_each_keeps_the_whole_registry(
    cluster: Cluster,
) -> None:
    """Adding a coordinator propagates through heartbeat replies; both registries hold every node."""
    _a, b, c, d = await two_coordinators(cluster)
    for member in (c, d):
        assert b.url in member.app[keys.MEMBERSHIP].targets()
    assert {p.node_id for p in registry_of(b).peers()} == {"a", "b", "c", "d"}
    assert {r.agent_id: r.node_id for r in registry_of(b).routing()[0]} == {"bob": "c", "dave": "d"}


async def test_failover_leaves_no_routing_gap_longer_than_a_ttl(cluster: Cluster) -> None:
    """With one of two coordinators killed, a member keeps a route to every live agent:
    no gap in its routing table longer than one TTL (measured, polling every 10 ms)."""
    a, _b, c, _d = await two_coordinators(cluster)
    ttl = c.settings.ttl  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    gap_started: float | None = None

    async def watch(until: float) -> None:
        nonlocal gap_started
        while loop.time() < until:
            routes = await local_routes(cluster, c)
            now = loop.time()
            if routes.get("dave") != "d":
                gap_started = gap_started or now
            elif gap_started is not None:
                gaps.append(now - gap_started)
                gap_started = None
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch(loop.time() + 3 * ttl))
    await asyncio.sleep(0.05)
    await cluster.stop_sidecar(a)
    await watcher
    if gap_started is not None:
        gaps.append(loop.time() - gap_started)
    assert all(gap < ttl for gap in gaps), gaps
    # The member now routes from b's registry, which saw a go down.
    status = await cluster.status(c)
    assert {n["node_id"]: n["state"] for n in status["nodes"]}["a"] == "down"
    assert status["answered_by"] == "b"


async def test_failsafe_routing_with_every_coordinator_down(cluster: Cluster) -> None:
    """With no coordinator answering, a member keeps routing from its last table, reports
    the table's age in status and /readyz, and stops routing to a peer its own probes find dead."""
    a, b, c, d = await two_coordinators(cluster)
    await cluster.stop_sidecar(a)
    await cluster.stop_sidecar(b)

    async def in_failsafe() -> bool:
        _code, body = await cluster.get(c.url + "/api/cluster/status")
        return bool(body["view"].get("failsafe"))

    await wait_for(in_failsafe, what="failsafe mode")
    routes = await local_routes(cluster, c)
    assert routes.get("dave") == "d"
    code, ready = await cluster.get(c.url + "/readyz")
    assert code == 503 and "routing from a table" in ready["reason"]
    _code, body = await cluster.get(c.url + "/api/cluster/status")
    assert body["view"]["stale"] is True and body["view"]["age_s"] > c.settings.ttl  # type: ignore[union-attr]
    assert body["coordinator_errors"]

    await cluster.stop_sidecar(d)

    async def dave_unrouted() -> bool:
        return "dave" not in await local_routes(cluster, c)

    await wait_for(dave_unrouted, what="failsafe probe to drop d")
    _code, body = await cluster.get(c.url + "/api/cluster/status")
    assert {n["node_id"]: n["state"] for n in body["nodes"]}["d"] == "down"


async def test_a_restarted_coordinator_does_not_shrink_the_routing_table(
    cluster: Cluster,
) -> None:
    """A coordinator that just (re)started has heard only from the nodes that heartbeated
    since: for one TTL it says it is warming up, and a member keeps routing from the copy it
    sent before, so an agent whose owner has not yet heartbeated to it is not suddenly
    unknown (an unknown agent is served locally: a write would land on the wrong daemon).
    After the TTL the member takes the rebuilt registry."""
    clock = ManualClock()
    a = await cluster.add("a", [], coordinator=True, clock=clock)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    c = await cluster.add("c", DAVE, coordinators=(a.url,))
    clock.advance(registry_of(a).ttl + 0.1)  # a's own first TTL: warmed up

    async def settled() -> bool:
        view = c.app[keys.MEMBERSHIP].views.get(a.url)
        return view is not None and not view.warming and view.route("bob") is not None

    await wait_for(settled, what="c to hold a's settled registry")
    # b stays up (it would answer requests) but is not heard by a for a while.
    b.app[keys.MEMBERSHIP].contact(a.url).removed = True
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a, clock=clock)
    restarted = c.app[keys.CLOCK].monotonic()
    contact = c.app[keys.MEMBERSHIP].contact(a.url)

    async def answered_again() -> bool:
        return contact.last_ok is not None and contact.last_ok > restarted

    await wait_for(answered_again, what="the restarted coordinator to answer c")
    assert await _routes_have(c, "bob")
    assert "b" not in {p.node_id for p in registry_of(a).peers()}
    clock.advance(registry_of(a).ttl + 0.1)
    await wait_for(lambda: _routes_lack(c, "bob"), what="c to take the rebuilt registry")
    b.app[keys.MEMBERSHIP].contact(a.url).removed = False
    await wait_for(lambda: _routes_have(c, "bob"), what="bob back once b heartbeats")


async def _routes_have(node: Node, agent: str) -> bool:
    view = node.app[keys.MEMBERSHIP].latest()
    return view is not None and view.route(agent) is not None


async def _routes_lack(node: Node, agent: str) -> bool:
    return not await _routes_have(node, agent)


async def test_promote_at_run_time_propagates_to_members(cluster: Cluster) -> None:
    """A member promoted to coordinator starts keeping the registry, every member learns of
    it and heartbeats to it, and the role survives a restart of that sidecar."""
    a = await cluster.add("a", [], coordinator=True)
    c = await cluster.add("c", BOB, coordinators=(a.url,))
    d = await cluster.add("d", DAVE, coordinators=(a.url,))
    await cluster.wait_states(a, {"c": "alive", "d": "alive"})
    code, body = await cluster.post(c.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 200 and body == {"node_id": "c", "coordinator": True, "was": False}
    await wait_for(lambda: _targets_include(d, c.url), what="d to learn coordinator c")
    await cluster.wait_states(c, {"a": "alive", "c": "alive", "d": "alive"})
    await cluster.stop_sidecar(c)
    await cluster.start_sidecar(c)
    assert c.app[keys.IDENTITY].coordinator is True


async def test_a_joined_member_promoted_pulls_decisions_from_its_coordinators(
    cluster: Cluster,
) -> None:
    """A member that knows its coordinator only from `join` (none configured) pulls the
    operator decisions from it when promoted, before it answers its first heartbeat as a
    coordinator: a node removed earlier is refused there at once."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB)
    removal = {"node_id": "ghost", "url": None, "state": "removed", "at": time.time()}
    code, _ = await cluster.post(a.url + "/api/cluster/admin", {"nodes": [removal]})
    assert code == 200
    code, _ = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 200
    await cluster.wait_states(a, {"b": "alive"})
    code, _ = await cluster.post(b.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 200
    assert "ghost" in b.app[COORDINATOR].removed


async def _targets_include(node: Node, url: str) -> bool:
    return url in node.app[keys.MEMBERSHIP].targets()


async def test_collision_resolves_identically_and_adopt_overrides_everywhere(
    cluster: Cluster,
) -> None:
    """Two nodes claim `writer`: both coordinators pick the same owner (the claim seen
    first); `adopt` on one coordinator moves it on both, and the choice survives a restart."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", [], coordinator=True, coordinators=(a.url,))
    writer = [{"name": "writer", "memory": {"read_policy": "shared"}}]
    x = await cluster.add("x", writer, coordinators=(a.url, b.url))
    y = await cluster.add("y", writer, coordinators=(a.url, b.url))
    for coordinator in (a, b):
        await cluster.wait_states(coordinator, {"x": "alive", "y": "alive"})
    collisions: dict[str, Any] = {}

    async def agree() -> bool:
        # Each coordinator saw the claims in its own order; replication settles on the
        # earliest sighting of each.
        for coordinator in (a, b):
            status = await cluster.status(coordinator)
            collisions[coordinator.name] = status["collisions"]
        return bool(collisions["a"]) and collisions["a"] == collisions["b"]

    await wait_for(agree, what="both coordinators pick one owner")
    (collision,) = collisions["a"]
    assert collision["claimants"] == ["x", "y"] and collision["rule"] == "first_claim"
    loser = "y" if collision["winner"] == "x" else "x"

    code, body = await cluster.post(
        a.url + "/api/cluster/adopt", {"agent_id": "writer", "node_id": loser}
    )
    assert code == 200 and body["owner"] == loser

    async def b_agrees() -> bool:
        routes = {r.agent_id: r.node_id for r in registry_of(b).routing()[0]}
        return routes.get("writer") == loser

    await wait_for(b_agrees, what="adoption replicated to b")
    await cluster.stop_sidecar(b)
    await cluster.start_sidecar(b)
    await cluster.wait_states(b, {"x": "alive", "y": "alive"})
    status = await cluster.status(b)
    assert {r["agent_id"]: r["node_id"] for r in status["routes"]}["writer"] == loser
    assert status["collisions"][0]["rule"] == "adopted"
    code, body = await cluster.post(
        a.url + "/api/cluster/adopt", {"agent_id": "writer", "node_id": "nobody"}
    )
    assert code == 400 and "does not host" in body["error"]
    del x, y


async def test_join_is_replicated_to_every_coordinator(cluster: Cluster) -> None:
    """A node joined through one coordinator is a joined member on the other too."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", [], coordinator=True, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    e = await cluster.add("e", BOB)
    code, _ = await cluster.post(a.url + "/api/cluster/join", {"address": e.url})
    assert code == 200

    async def joined_on_b() -> bool:
        record = registry_of(b).record("e")
        return record is not None and record.joined

    await wait_for(joined_on_b, what="join replicated to b")
    await cluster.wait_states(b, {"e": "alive"})


def _names(body: dict[str, Any]) -> set[str]:
    return {n["node_id"] for n in body["nodes"]}


async def test_a_demoted_coordinator_drops_its_own_registry_copy(cluster: Cluster) -> None:
    """After `promote --demote` the sidecar stops using the registry it kept as a
    coordinator: it is no longer a view it routes from, no longer lists itself as a
    coordinator, and its status comes from the remaining coordinator without asking itself."""
    a = await cluster.add("a", [], coordinator=True)
    c = await cluster.add("c", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"c": "alive"})
    membership = c.app[keys.MEMBERSHIP]
    code, _ = await cluster.post(c.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 200
    await wait_for(lambda: _targets_include(c, c.url), what="c to list itself")
    code, _ = await cluster.post(c.url + "/api/cluster/promote", {"coordinator": False})
    assert code == 200

    async def a_sees_c_as_member() -> bool:
        record = registry_of(a).record("c")
        return record is not None and not record.heartbeat.coordinator

    async def settled() -> bool:
        view = membership.views.get(a.url)
        return (
            view is not None
            and c.url not in view.coordinators
            and c.url not in membership.views
            and c.url not in membership.targets()
            # a learned c as a coordinator and forgets it on c's first "not a coordinator".
            and c.url not in a.app[keys.MEMBERSHIP].targets()
        )

    await wait_for(a_sees_c_as_member, what="a to see c demoted")
    await wait_for(settled, what="c's own registry and role to be forgotten")
    _code, local = await cluster.get(c.url + "/api/cluster/status?local=1")
    assert c.url not in local["coordinators"] and local["view"]["source"] == a.url
    status = await cluster.status(c)
    assert status["answered_by"] == "a" and "coordinator_errors" not in status


async def test_a_live_coordinator_is_demoted_before_it_is_removed(cluster: Cluster) -> None:
    """`remove` of a coordinator that is alive is refused with the command that demotes it;
    a coordinator removed anyway (it was down, and came back) keeps heartbeating to the
    others instead of failing every round, and says once that it was removed."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", [], coordinator=True, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    code, body = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 400 and "promote --demote" in body["error"], body
    assert registry_of(a).record("b") is not None

    with structlog.testing.capture_logs() as logs:
        # As if b had been removed while down: the decision reaches it by replication.
        code, _ = await cluster.post(
            b.url + "/api/cluster/admin",
            {"nodes": [{"node_id": "b", "url": b.url, "state": "removed", "at": time.time()}]},
        )
        assert code == 200
        seq = b.app[keys.IDENTITY].next_seq()
        await wait_for(lambda: _seq_passed(b, seq + 5), what="b to keep running heartbeat rounds")
    events = [entry["event"] for entry in logs]
    assert "heartbeat_round_failed" not in events
    assert events.count("coordinator_removed") == 1


async def _seq_passed(node: Node, seq: int) -> bool:
    return node.app[keys.IDENTITY].next_seq() > seq
