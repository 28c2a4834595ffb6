"""The coordinator's registry: TTL expiry, reaping, joined peers, routing and collisions,
driven by a manual clock."""

from __future__ import annotations

import pytest

from signet_cluster.clock import ManualClock
from signet_cluster.protocol import AgentInfo, DaemonInfo, Heartbeat, PeerView, ProtocolRange
from signet_cluster.registry import Registry, compute_routing


def hb(node: str, agents: list[AgentInfo], seq: int = 1, url: str | None = None) -> Heartbeat:
    return Heartbeat(
        protocol=ProtocolRange(min=1, max=1),
        node_id=node,
        instance_id="i-" + node,
        url=url or f"http://127.0.0.1:{7000 + len(node)}",
        sidecar_version="0.1.0",
        daemon=DaemonInfo(flavor="ts", version="0.145.7", healthy=True),
        agents=tuple(agents),
        seq=seq,
        sent_at=1.0,
    )


def view(heartbeat: Heartbeat, state: str = "alive") -> PeerView:
    return PeerView(
        node_id=heartbeat.node_id,
        url=heartbeat.url,
        state=state,
        joined=False,
        coordinator=False,
        protocol=1,
        sidecar_version=heartbeat.sidecar_version,
        instance_id=heartbeat.instance_id,
        daemon=heartbeat.daemon,
        agents=heartbeat.agents,
        last_seen_age_s=0.0,
    )


def agent(name: str, policy: str = "shared", created: str | None = None) -> AgentInfo:
    return AgentInfo(id=name, read_policy=policy, created_at=created)


def test_ttl_expiry_removes_stale_peer_from_routing() -> None:
    """A node silent for longer than the TTL goes down and its agents leave the routing table."""
    clock = ManualClock()
    reg = Registry(ttl=5.0, reap_after=60.0, clock=clock)
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    reg.apply_heartbeat(hb("b", [agent("bob")]), 1)
    assert {r.agent_id for r in reg.routing()[0]} == {"alice", "bob"}
    clock.advance(4.0)
    reg.apply_heartbeat(hb("a", [agent("alice")], seq=2), 1)
    assert reg.expire() == []
    clock.advance(2.0)  # b silent for 6 s > TTL, a for 2 s
    events = reg.expire()
    assert [(e.kind, e.node_id) for e in events] == [("went_down", "b")]
    assert {r.agent_id for r in reg.routing()[0]} == {"alice"}
    assert {p.node_id: p.state for p in reg.peers()} == {"a": "alive", "b": "down"}


def test_discovered_peer_is_reaped_but_joined_peer_stays_down() -> None:
    """Past reap_after a discovered node disappears; a joined one stays listed as down."""
    clock = ManualClock()
    reg = Registry(ttl=5.0, reap_after=30.0, clock=clock)
    reg.apply_heartbeat(hb("disc", [agent("x")]), 1)
    reg.apply_heartbeat(hb("member", [agent("y")]), 1)
    reg.mark_joined("member", "http://127.0.0.1:9")
    clock.advance(6)
    reg.expire()
    clock.advance(31)
    kinds = [(e.kind, e.node_id) for e in reg.expire()]
    assert kinds == [("reaped", "disc")]
    assert [(p.node_id, p.state, p.joined) for p in reg.peers()] == [("member", "down", True)]


def test_came_back_after_down() -> None:
    """A down node that heartbeats again is alive and routable again."""
    clock = ManualClock()
    reg = Registry(ttl=1.0, reap_after=30.0, clock=clock)
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    clock.advance(2)
    reg.expire()
    assert reg.routing()[0] == ()
    events = reg.apply_heartbeat(hb("a", [agent("alice")], seq=3), 1)
    assert [e.kind for e in events] == ["came_back"]
    assert [r.node_id for r in reg.routing()[0]] == ["a"]


def test_default_agent_is_never_routed() -> None:
    """`default` exists on every daemon and stays node-local: no route, no collision."""
    clock = ManualClock()
    reg = Registry(ttl=5.0, reap_after=30.0, clock=clock)
    reg.apply_heartbeat(hb("a", [agent("default")]), 1)
    reg.apply_heartbeat(hb("b", [agent("default")]), 1)
    assert reg.routing() == ((), ())


def test_collision_rule_is_deterministic_and_order_independent() -> None:
    """With the same recorded claims, the earliest claim wins whatever order the peers are
    listed in, then the smallest node id for claims with no record."""
    a = hb("node-a", [agent("writer")])
    b = hb("node-b", [agent("writer")])
    c = hb("node-c", [agent("writer")])
    claims = {"writer": {"node-b": 10.0, "node-a": 20.0}}
    winners = set()
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        records = [view(h) for h in order]
        routes, collisions = compute_routing(records, {}, claims)
        winners.add((routes[0].node_id, collisions[0].winner, collisions[0].claimants))
    assert winners == {("node-b", "node-b", ("node-a", "node-b", "node-c"))}
    routes, _ = compute_routing([view(a), view(b), view(c)], {}, {})
    assert routes[0].node_id == "node-a"


def test_adoption_overrides_the_first_claim() -> None:
    """An adoption naming a claimant beats the first claim."""
    records = [view(hb(n, [agent("w")], url=f"http://{n}:1")) for n in ("zeta", "alpha")]
    claims = {"w": {"alpha": 1.0, "zeta": 2.0}}
    routes, collisions = compute_routing(records, {}, claims)
    assert routes[0].node_id == "alpha" and collisions[0].rule == "first_claim"
    routes, collisions = compute_routing(records, {"w": "zeta"}, claims)
    assert routes[0].node_id == "zeta" and collisions[0].rule == "adopted"


def test_a_self_reported_created_at_never_takes_an_agent() -> None:
    """Hijack by claim (issue 12): a node that claims alice and bob later than their owner,
    with `created_at` 1970, is a collision that loses; the routes stay on the owner."""
    reg = Registry(ttl=5.0, reap_after=30.0, clock=ManualClock())
    owner = hb("node-a", [agent("alice", created="2026-03-01T00:00:00Z"), agent("bob")])
    reg.apply_heartbeat(owner, 1)
    before = reg.routing()[0]
    evil = [
        agent("alice", created="1970-01-01T00:00:00Z"),
        agent("bob", created="1970-01-01T00:00:00Z"),
    ]
    reg.apply_heartbeat(hb("aaa-evil", evil, url="http://evil:1"), 1)
    routes, collisions = reg.routing()
    assert routes == before
    assert {(c.agent_id, c.winner, c.claimants) for c in collisions} == {
        ("alice", "node-a", ("aaa-evil", "node-a")),
        ("bob", "node-a", ("aaa-evil", "node-a")),
    }


def test_a_down_claimant_never_takes_an_agent_from_a_live_owner() -> None:
    """When the attacker stops heartbeating it goes down and its claim stays a collision;
    the live owner keeps its routes."""
    clock = ManualClock()
    reg = Registry(ttl=1.0, reap_after=100.0, clock=clock)
    reg.apply_heartbeat(hb("node-a", [agent("alice")]), 1)
    reg.apply_heartbeat(hb("aaa-evil", [agent("alice", created="1970-01-01T00:00:00Z")]), 1)
    clock.advance(2)
    reg.apply_heartbeat(hb("node-a", [agent("alice")], seq=2), 1)
    reg.expire()
    routes, collisions = reg.routing()
    assert [(r.agent_id, r.node_id) for r in routes] == [("alice", "node-a")]
    assert collisions[0].winner == "node-a"


def test_stored_claims_survive_a_restart_and_releases_free_the_agent() -> None:
    """A registry rebuilt after a restart keeps the stored first claims, so whoever
    heartbeats first does not take the agent; a roster that drops the agent releases it."""
    reg = Registry(ttl=5.0, reap_after=30.0, clock=ManualClock())
    reg.set_claims({"alice": {"node-a": 5.0}})
    reg.apply_heartbeat(hb("aaa-evil", [agent("alice")]), 1)
    reg.apply_heartbeat(hb("node-a", [agent("alice")]), 1)
    assert reg.routing()[0][0].node_id == "node-a"
    assert reg.take_claim_changes() == {
        ("alice", "aaa-evil"): pytest.approx(reg.claims()["alice"]["aaa-evil"])
    }
    reg.apply_heartbeat(hb("node-a", [], seq=2), 1)
    assert reg.routing()[0][0].node_id == "aaa-evil"
    assert reg.take_claim_changes() == {("alice", "node-a"): None}


def test_down_winner_keeps_its_agent_unrouted() -> None:
    """A collision winner that is down is not replaced by the other claimant (never two owners)."""
    clock = ManualClock()
    reg = Registry(ttl=1.0, reap_after=100.0, clock=clock)
    reg.apply_heartbeat(hb("b", [agent("w", created="2026-06-01T00:00:00Z")]), 1)
    clock.advance(2)
    reg.apply_heartbeat(hb("a", [agent("w", created="2026-01-01T00:00:00Z")]), 1)
    clock.advance(0.5)
    reg.apply_heartbeat(hb("a", [agent("w", created="2026-01-01T00:00:00Z")], seq=2), 1)
    reg.expire()
    routes, collisions = reg.routing()
    assert routes == ()
    assert collisions[0].winner == "b"


def test_version_only_moves_on_change() -> None:
    """Identical heartbeats do not bump the registry version (so replies can say 'unchanged')."""
    clock = ManualClock()
    reg = Registry(ttl=5.0, reap_after=30.0, clock=clock)
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    version = reg.version
    reg.apply_heartbeat(hb("a", [agent("alice")], seq=2), 1)
    assert reg.version == version
    reg.apply_heartbeat(hb("a", [agent("alice"), agent("anna")], seq=3), 1)
    assert reg.version > version


def test_rejoining_a_node_that_moved_changes_nothing() -> None:
    """A joined node whose heartbeats name another URL than its join decision keeps the
    heartbeat's URL; re-applying the decision (every admin change re-applies them all) is
    a no-op instead of a new registry version each time, which would send every node the
    whole registry again."""
    reg = Registry(ttl=5.0, reap_after=30.0, clock=ManualClock())
    assert reg.mark_joined("a", "http://10.0.0.1:3860") is True
    reg.apply_heartbeat(hb("a", [], url="http://10.0.0.9:3860"), 1)
    version = reg.version
    assert reg.mark_joined("a", "http://10.0.0.1:3860") is False
    assert reg.version == version
    assert reg.record("a").url == "http://10.0.0.9:3860"  # type: ignore[union-attr]


def test_find_by_id_host_port_and_host() -> None:
    """remove accepts a node id, HOST:PORT, a URL or a bare host when only one node is there."""
    reg = Registry(ttl=5, reap_after=5, clock=ManualClock())
    reg.apply_heartbeat(hb("a", [], url="http://10.0.0.1:3860"), 1)
    reg.apply_heartbeat(hb("b", [], url="http://10.0.0.2:3860"), 1)
    reg.apply_heartbeat(hb("c", [], url="http://10.0.0.2:3861"), 1)
    assert reg.find("a").node_id == "a"  # type: ignore[union-attr]
    assert reg.find("10.0.0.1").node_id == "a"  # type: ignore[union-attr]
    assert reg.find("http://10.0.0.2:3861").node_id == "c"  # type: ignore[union-attr]
    assert reg.find("10.0.0.2") is None
    assert reg.matches("10.0.0.2") == ["b", "c"]
