"""signet_cluster.explain: who can read an agent's memories and why a read would miss, by
the daemon's read rules inside a node and DESIGN §7 across nodes (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from signet_cluster.explain import ClusterPicture, Explanation, explain
from signet_cluster.protocol import AgentInfo, DaemonInfo, PeerView
from signet_cluster.registry import compute_routing

DEFAULT = AgentInfo(id="default", read_policy="shared")


def agent(name: str, policy: str, group: str | None = None) -> AgentInfo:
    return AgentInfo(
        id=name, read_policy=policy, policy_group=group, created_at="2026-01-01T00:00:00Z"
    )


def node(node_id: str, *agents: AgentInfo, state: str = "alive", healthy: bool = True) -> PeerView:
    return PeerView(
        node_id=node_id,
        url=f"http://{node_id}:3860",
        state=state,
        joined=True,
        coordinator=node_id == "n1",
        protocol=1,
        sidecar_version="0.1.0",
        instance_id="i-" + node_id,
        daemon=DaemonInfo(flavor="ts", version="0.145.7", healthy=healthy),
        agents=(DEFAULT, *agents),
        last_seen_age_s=0.2 if state == "alive" else 9.0,
    )


def picture(*peers: PeerView, stale: bool = False, **kw: Any) -> ClusterPicture:
    routes, collisions = compute_routing(peers, {}, {})
    return ClusterPicture(
        peers=peers, routes=routes, collisions=collisions, stale=stale, table_age_s=kw.get("age")
    )


def demo(**states: str) -> ClusterPicture:
    """The demo's layout: every policy on three nodes."""
    return picture(
        node(
            "n1",
            agent("alice", "isolated"),
            agent("bob", "shared"),
            state=states.get("n1", "alive"),
        ),
        node(
            "n2",
            agent("carol", "group", "ops"),
            agent("dave", "group", "ops"),
            state=states.get("n2", "alive"),
        ),
        node(
            "n3",
            agent("erin", "shared"),
            agent("frank", "group", "ops"),
            state=states.get("n3", "alive"),
        ),
    )


def readers(expl: Explanation) -> set[tuple[str, str, str]]:
    return {(r.agent_id, r.node_id, r.scope) for r in expl.readers}


def reads(expl: Explanation) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(s.node_id, s.scope): s.agents for s in expl.reads}


def test_isolated_agent_is_read_only_on_its_own_node() -> None:
    """An isolated agent's memories are read by itself and, on its own daemon, by that
    node's shared agents (global ones only); nobody elsewhere; it reads only its own."""
    expl = explain(demo(), "alice")
    assert expl.known and expl.ok and expl.owner == "n1" and expl.route is not None
    assert readers(expl) == {
        ("alice", "n1", "own"),
        ("bob", "n1", "global"),
        ("default", "n1", "global"),
    }
    assert reads(expl) == {("n1", "own"): ("alice",)}
    assert any(n.startswith("alice is isolated") for n in expl.notes)


def test_shared_agent_reads_and_is_read_across_nodes() -> None:
    """A shared agent is read by every shared agent anywhere (defaults included) but not by
    group readers of another group; it reads its own daemon's global memories (isolated
    agents' too, as the daemon does) and non-isolated agents' global memories elsewhere."""
    expl = explain(demo(), "bob")
    assert readers(expl) == {
        ("bob", "n1", "own"),
        ("default", "n1", "global"),
        ("default", "n2", "global"),
        ("default", "n3", "global"),
        ("erin", "n3", "global"),
    }
    assert reads(expl) == {
        ("n1", "own"): ("bob",),
        ("n1", "global"): ("alice", "default"),
        ("n2", "global"): ("carol", "dave", "default"),
        ("n3", "global"): ("default", "erin", "frank"),
    }


def test_group_agent_reads_its_group_and_is_read_by_it_and_shared_readers() -> None:
    """A group agent's memories reach its group members and shared readers anywhere; it
    reads its group's global memories and nothing of other agents."""
    expl = explain(demo(), "carol")
    assert readers(expl) == {
        ("carol", "n2", "own"),
        ("dave", "n2", "global"),
        ("default", "n2", "global"),
        ("frank", "n3", "global"),
        ("bob", "n1", "global"),
        ("default", "n1", "global"),
        ("erin", "n3", "global"),
        ("default", "n3", "global"),
    }
    assert reads(expl) == {
        ("n2", "own"): ("carol",),
        ("n2", "global"): ("dave",),
        ("n3", "global"): ("frank",),
    }


def test_owner_down_is_a_miss_and_there_is_no_route() -> None:
    """With the owner down the agent has no route and the explanation says reads get
    nothing from the owner."""
    expl = explain(demo(n2="down"), "carol")
    assert expl.known and not expl.ok
    assert expl.route is None and expl.owner == "n2" and expl.owner_state == "down"
    assert any("node n2 is down, last heartbeat 9.0s ago" in m for m in expl.misses)


def test_unhealthy_owner_daemon_is_a_miss() -> None:
    """A live node whose daemon is unhealthy still owns the agent, but reads would miss."""
    p = picture(node("n1", agent("alice", "isolated"), healthy=False))
    expl = explain(p, "alice")
    assert any("the daemon on n1 is unhealthy" in m for m in expl.misses)


def test_a_down_node_the_reader_reads_from_is_named_with_what_is_missing() -> None:
    """A shared reader loses the global memories held on a down node; the miss lists whose."""
    expl = explain(demo(n3="down"), "bob")
    assert any(
        "node n3 is down" in m and "default, erin, frank are missing from bob's reads" in m
        for m in expl.misses
    )
    # carol (group ops) does not read erin but does read frank on n3.
    assert any("frank are missing" in m for m in explain(demo(n3="down"), "carol").misses)
    # alice (isolated) reads nothing there.
    assert explain(demo(n3="down"), "alice").ok


def test_collision_names_claimants_winner_and_the_fix() -> None:
    """An agent claimed twice is explained with its single owner, the losers, and `adopt`."""
    p = picture(node("n1", agent("alice", "shared")), node("n2", agent("alice", "shared")))
    expl = explain(p, "alice")
    assert expl.collision is not None and expl.collision.claimants == ("n1", "n2")
    assert expl.owner == expl.collision.winner == "n1"
    assert any("also claimed by n2" in m and "adopt alice NODE" in m for m in expl.misses)


def test_unknown_agent_and_default_and_stale_table() -> None:
    """An agent no node reports is unknown with the reason; `default` is node-local; a
    stale routing table is a miss of its own."""
    unknown = explain(demo(), "zed")
    assert not unknown.known and "no node in the cluster reports" in unknown.misses[0]
    default = explain(demo(), "default")
    assert default.known and default.owner is None and default.ok
    stale = explain(picture(node("n1", agent("alice", "isolated")), stale=True, age=42.0), "alice")
    assert any("42.0s old" in m for m in stale.misses)


def test_group_without_a_group_acts_isolated() -> None:
    """`group` with no group is read by the daemon as isolated: it reads only its own
    memories, and nothing of it crosses nodes (only its own daemon's shared agents see its
    global memories)."""
    p = picture(node("n1", agent("gus", "group")), node("n2", agent("erin", "shared")))
    expl = explain(p, "gus")
    assert reads(expl) == {("n1", "own"): ("gus",)}
    assert readers(expl) == {("gus", "n1", "own"), ("default", "n1", "global")}
    assert any("no group" in n for n in expl.notes)
    assert any(n.startswith("none of gus's memories leave n1") for n in expl.notes)
    # erin (shared, on n2) gets n1's default, nothing of gus's.
    assert reads(explain(p, "erin"))[("n1", "global")] == ("default",)


def test_cross_node_readers_follow_what_nodes_contribute() -> None:
    """Across nodes a group G reader gets only `group` G agents' memories (as
    `may_contribute` decides), not those of a shared agent that merely carries
    policy_group G; on the owner's daemon that agent is still read by G's members."""
    p = picture(
        node("n1", agent("sam", "shared", "ops"), agent("olga", "group", "ops")),
        node("n2", agent("carol", "group", "ops")),
    )
    expl = explain(p, "sam")
    assert ("olga", "n1", "global") in readers(expl)
    assert ("carol", "n2", "global") not in readers(expl)
    assert reads(explain(p, "carol")) == {
        ("n2", "own"): ("carol",),
        ("n1", "global"): ("olga",),
    }


def test_losing_copies_are_still_read_where_they_are_held() -> None:
    """An agent claimed twice: reads as it go to the winner, but a daemon holding a losing
    copy still shows its global memories to its own shared agents and contributes them to
    federated reads (the reads list names that node), and the miss says so."""
    p = picture(
        node("n1", agent("alice", "shared"), agent("bob", "shared")),
        node("n2", agent("alice", "shared"), agent("erin", "shared")),
    )
    expl = explain(p, "alice")
    assert expl.owner == "n1"
    assert reads(expl)[("n2", "global")] == ("alice", "default", "erin")
    assert any("read at most as federated global memories" in m for m in expl.misses)
    # erin on n2 reads alice's copy there through her own daemon (n2 answers for erin).
    assert "alice" in reads(explain(p, "erin"))[("n2", "global")]


def test_owner_down_says_remembers_are_spooled() -> None:
    """With the owner down, remembers are spooled (202) rather than refused; other writes 503."""
    expl = explain(demo(n2="down"), "carol")
    assert any("remembers for it are spooled (202)" in m for m in expl.misses)
    assert not any("cannot reach its daemon" in m for m in expl.misses)


def test_from_status_reads_the_status_document() -> None:
    """A status document as the sidecar serves it becomes the same picture."""
    from signet_cluster.converter import unstructure

    p = demo()
    body = {
        "nodes": unstructure(p.peers),
        "routes": unstructure(p.routes),
        "collisions": unstructure(p.collisions),
        "view": {"age_s": 1.5, "stale": False, "source": "registry"},
        "extra": "ignored",
    }
    parsed = ClusterPicture.from_status(body)
    assert parsed.peers == p.peers and parsed.routes == p.routes and parsed.table_age_s == 1.5
    assert explain(parsed, "carol") == attrs.evolve(explain(p, "carol"), table_age_s=1.5)


POLICIES = st.sampled_from(
    [
        ("isolated", None),
        ("shared", None),
        ("shared", "ops"),
        ("group", "ops"),
        ("group", "dev"),
        ("group", None),
    ]
)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterPicture:
    names = iter(f"a{i}" for i in range(100))
    peers = []
    for index in range(draw(st.integers(1, 4))):
        agents = [agent(next(names), *draw(POLICIES)) for _ in range(draw(st.integers(0, 3)))]
        peers.append(node(f"n{index}", *agents, state=draw(st.sampled_from(["alive", "down"]))))
    return picture(*peers)


@given(clusters())
def test_read_rules_hold_for_any_cluster(p: ClusterPicture) -> None:
    """For every agent of any cluster: nothing of an isolated agent is read off its node;
    every cross-node reader is shared or in the agent's group; the agent itself is the only
    reader of everything (scope own); an agent is never listed as reading itself globally."""
    for peer in p.peers:
        for a in peer.agents:
            if a.id == "default":
                continue
            expl = explain(p, a.id)
            effective_isolated = a.read_policy == "isolated" or (
                a.read_policy == "group" and a.policy_group is None
            )
            own = [r for r in expl.readers if r.scope == "own"]
            assert [(r.agent_id, r.node_id) for r in own] == [(a.id, peer.node_id)]
            for r in expl.readers:
                if r.node_id != peer.node_id:
                    assert not effective_isolated
                    assert r.read_policy == "shared" or (
                        r.read_policy == "group"
                        and a.read_policy == "group"
                        and r.policy_group == a.policy_group is not None
                    )
                if r.scope == "global":
                    assert r.agent_id != a.id
            if effective_isolated:
                assert {s.scope for s in expl.reads} == {"own"}
            assert (expl.route is None) == (peer.state != "alive")
