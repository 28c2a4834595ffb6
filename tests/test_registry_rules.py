"""The rules of the coordinator's registry (signet_cluster.registry) that routing depends on:
what bumps the version, when a discovered node is reaped, what an operator's removal does,
and what an unchanged heartbeat keeps. Driven by a manual clock.

The collision rule (issue 12: the claim the registry saw first owns an agent, whatever the
heartbeat says about itself) is pinned here by one rule; its other cases (adoption, down
claimants, restarts) are in tests/test_registry.py."""

from __future__ import annotations

import attrs
import pytest

from signet_cluster.clock import ManualClock
from signet_cluster.protocol import AgentInfo, Collision, DaemonInfo, RouteEntry, SpoolSummary
from signet_cluster.registry import Registry, RegistryEvent

from .test_registry import agent, hb

TTL = 10.0
REAP_AFTER = 100.0


def _registry() -> tuple[Registry, ManualClock]:
    clock = ManualClock()
    return Registry(ttl=TTL, reap_after=REAP_AFTER, clock=clock), clock


def _routes(reg: Registry) -> dict[str, str]:
    return {r.agent_id: r.url for r in reg.routing()[0]}


def test_a_heartbeat_that_only_moves_the_url_bumps_the_version() -> None:
    """Rule: a node that comes back on another URL changes the registry (a new version), and
    routes to its agents use the new URL from then on."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("alice")], url="http://127.0.0.1:7001"), 1)
    assert _routes(reg) == {"alice": "http://127.0.0.1:7001"}
    version = reg.version
    reg.apply_heartbeat(hb("a", [agent("alice")], seq=2, url="http://127.0.0.1:7002"), 1)
    assert reg.version > version
    assert _routes(reg) == {"alice": "http://127.0.0.1:7002"}
    assert reg.record("a").url == "http://127.0.0.1:7002"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "change",
    [
        {"instance_id": "i-restarted"},
        {"coordinator": True},
        {"sidecar_version": "0.2.0"},
        {"daemon": DaemonInfo(flavor="rust", version="0.99.0", healthy=True)},
        {"spool": SpoolSummary(depth=3, bytes=120)},
        {"agents": (AgentInfo(id="alice", read_policy="isolated"),)},
    ],
)
def test_every_field_the_registry_shows_bumps_the_version(change: dict[str, object]) -> None:
    """Rule: a heartbeat that changes anything a peer view shows (instance, coordinator role,
    sidecar version, daemon, spool, agents) is a new registry version; only the sequence
    number and send time moving is not."""
    reg, _clock = _registry()
    first = hb("a", [agent("alice")])
    reg.apply_heartbeat(first, 1)
    version = reg.version
    reg.apply_heartbeat(attrs.evolve(first, seq=2, sent_at=2.0), 1)
    assert reg.version == version
    reg.apply_heartbeat(attrs.evolve(first, seq=3, **change), 1)  # type: ignore[arg-type]
    assert reg.version > version


def test_a_roster_change_is_reported() -> None:
    """Rule: a heartbeat with another agent list reports `roster_changed` for that node; one
    with the same list reports nothing."""
    reg, _clock = _registry()
    events = reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    assert [(e.kind, e.node_id) for e in events] == [("joined_cluster", "a")]
    assert reg.apply_heartbeat(hb("a", [agent("alice")], seq=2), 1) == []
    events = reg.apply_heartbeat(hb("a", [agent("alice"), agent("anna")], seq=3), 1)
    assert [(e.kind, e.node_id) for e in events] == [("roster_changed", "a")]


def test_an_unchanged_heartbeat_keeps_the_spool_summary() -> None:
    """Rule: a heartbeat identical to the last keeps what the registry shows, the spool
    summary included (it is not wiped by the memory-saving path for unchanged beats)."""
    reg, _clock = _registry()
    spool = SpoolSummary(depth=4, bytes=900, oldest_at=1_800_000_000.0, dead_letters=1)
    reg.apply_heartbeat(attrs.evolve(hb("a", [agent("alice")]), spool=spool), 1)
    reg.apply_heartbeat(attrs.evolve(hb("a", [agent("alice")], seq=2), spool=spool), 1)
    (peer,) = reg.peers()
    assert peer.spool == spool
    assert peer.seq == 2
    assert [a.id for a in peer.agents] == ["alice"]
    assert peer.daemon.flavor == "ts"


def test_a_discovered_node_is_reaped_only_after_reap_after_seconds_down() -> None:
    """Rule: a node that was only discovered (never joined) stays listed as down for exactly
    `reap_after` seconds after it went down, and is reaped once that time has passed; the
    event carries how long it had been silent."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("disc", [agent("x")]), 1)
    clock.advance(TTL + 1)  # silent past the TTL: down from now on
    assert [e.kind for e in reg.expire()] == ["went_down"]
    clock.advance(REAP_AFTER / 2)
    assert reg.expire() == []
    clock.advance(REAP_AFTER / 2)  # exactly reap_after seconds down: not yet
    assert reg.expire() == []
    assert [p.node_id for p in reg.peers()] == ["disc"]
    clock.advance(0.5)
    events = reg.expire()
    assert [(e.kind, e.node_id) for e in events] == [("reaped", "disc")]
    assert events[0].age_s == pytest.approx(TTL + 1 + REAP_AFTER + 0.5)
    assert reg.peers() == []
    assert "disc" not in reg


def test_a_node_goes_down_only_after_the_ttl() -> None:
    """Rule: a node is alive while it was heard from within the TTL (exactly TTL included),
    and the `went_down` event carries the silence."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    clock.advance(TTL)
    assert reg.expire() == []
    clock.advance(0.25)
    events = reg.expire()
    assert [(e.kind, e.node_id) for e in events] == [("went_down", "a")]
    assert events[0].age_s == pytest.approx(TTL + 0.25)


def test_remove_forgets_a_node_and_its_routes() -> None:
    """Rule: removing a node drops it and its routes and is a new registry version; removing
    a node that is not there changes nothing and says so."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    reg.apply_heartbeat(hb("bb", [agent("bob")]), 1)
    version = reg.version
    assert reg.remove("a") is True
    assert reg.version > version
    assert "a" not in reg and len(reg) == 1
    assert [p.node_id for p in reg.peers()] == ["bb"]
    assert set(_routes(reg)) == {"bob"}
    version = reg.version
    assert reg.remove("a") is False
    assert reg.version == version


def test_a_joined_node_that_never_heartbeats_is_down_and_kept() -> None:
    """Rule: an operator's join puts a node in the registry as down (no heartbeat yet) and it
    is never reaped; joining again is a no-op unless the URL moved before any heartbeat."""
    reg, clock = _registry()
    assert reg.mark_joined("j", "http://127.0.0.1:7100") is True
    version = reg.version
    assert reg.mark_joined("j", "http://127.0.0.1:7100") is False
    assert reg.version == version
    assert reg.mark_joined("j", "http://127.0.0.1:7101") is True
    assert reg.version > version
    clock.advance(REAP_AFTER * 3)
    assert reg.expire() == []
    (peer,) = reg.peers()
    assert (peer.node_id, peer.state, peer.joined, peer.url) == (
        "j",
        "down",
        True,
        "http://127.0.0.1:7101",
    )


def test_a_discovered_node_that_is_then_joined_is_kept() -> None:
    """Rule: joining a node already known from heartbeats marks it joined (a new version), so
    it is no longer reaped when it goes down."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    version = reg.version
    assert reg.mark_joined("a", "http://127.0.0.1:1") is True
    assert reg.version > version
    clock.advance(TTL + REAP_AFTER * 2)
    reg.expire()
    clock.advance(REAP_AFTER * 2)
    assert [e.kind for e in reg.expire()] == []
    assert [(p.node_id, p.state, p.joined) for p in reg.peers()] == [("a", "down", True)]


def test_adoptions_change_the_version_only_when_they_change() -> None:
    """Rule: setting the same operator adoptions again is not a new version; new ones are,
    and routing follows them."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("w", created="2026-01-01T00:00:00Z")]), 1)
    reg.apply_heartbeat(hb("bb", [agent("w", created="2026-06-01T00:00:00Z")]), 1)
    version = reg.version
    reg.set_adoptions({})
    assert reg.version == version
    reg.set_adoptions({"w": "bb"})
    assert reg.version > version
    assert [r.node_id for r in reg.routing()[0]] == ["bb"]
    version = reg.version
    reg.set_adoptions({"w": "bb"})
    assert reg.version == version


def test_the_peer_view_shows_the_last_heartbeat() -> None:
    """Rule: a peer's view carries what its last heartbeat said and how long ago it came;
    (issue 12) it is shown as a coordinator only when that heartbeat came with a coordinator
    credential, and gaining or losing that proof bumps the version."""
    reg, clock = _registry()
    beat = attrs.evolve(hb("a", [agent("alice")], seq=7), coordinator=True)
    reg.apply_heartbeat(beat, 1)
    assert reg.peers()[0].coordinator is False
    version = reg.version
    reg.apply_heartbeat(beat, 1, coordinator_proven=True)
    assert reg.version > version
    clock.advance(1.5)
    (peer,) = reg.peers()
    assert peer.state == "alive" and peer.joined is False
    assert peer.coordinator is True and peer.protocol == 1 and peer.seq == 7
    assert peer.sidecar_version == "0.1.0" and peer.instance_id == "i-a"
    assert peer.last_seen_age_s == pytest.approx(1.5)
    assert reg.find(beat.url) is not None


def test_an_unchanged_heartbeat_keeps_the_stored_objects() -> None:
    """Rule: when nothing the registry shows changed, the stored agents, daemon and spool
    objects stay (the new heartbeat's equal copies are dropped), so a steady cluster does not
    churn long-lived objects (bench/capacity.py measures the GC cost of that churn)."""
    reg, _clock = _registry()
    spool = SpoolSummary(depth=1)
    first = attrs.evolve(hb("a", [agent("alice")]), spool=spool)
    reg.apply_heartbeat(first, 1)
    again = attrs.evolve(
        hb("a", [agent("alice")], seq=2), spool=SpoolSummary(depth=1)
    )  # equal values, new objects
    assert again.agents is not first.agents and again.spool is not spool
    reg.apply_heartbeat(again, 1)
    stored = reg.record("a").heartbeat  # type: ignore[union-attr]
    assert stored is not None and stored.seq == 2
    assert stored.agents is first.agents
    assert stored.daemon is first.daemon
    assert stored.spool is spool


def test_a_change_that_is_not_the_roster_reports_no_roster_change() -> None:
    """Rule: `roster_changed` means the agent list changed, not any field."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("alice")]), 1)
    version = reg.version
    assert reg.apply_heartbeat(hb("a", [agent("alice")], seq=2, url="http://127.0.0.1:1"), 1) == []
    assert reg.version > version


def test_events_name_their_node() -> None:
    """Rule: every registry event carries its kind and the node it is about."""
    reg, clock = _registry()
    assert reg.apply_heartbeat(hb("a", [agent("alice")]), 1) == [
        RegistryEvent(kind="joined_cluster", node_id="a")
    ]
    assert reg.apply_heartbeat(hb("a", [agent("anna")], seq=2), 1) == [
        RegistryEvent(kind="roster_changed", node_id="a")
    ]
    clock.advance(TTL + 1)
    reg.expire()
    assert reg.apply_heartbeat(hb("a", [agent("anna")], seq=3), 1) == [
        RegistryEvent(kind="came_back", node_id="a")
    ]


def test_a_joined_node_before_its_first_heartbeat_shows_as_unknown() -> None:
    """Rule: a peer known only from an operator's join shows its URL, down, joined, no
    coordinator role, an unknown unhealthy daemon and no agents, sequence or spool."""
    reg, _clock = _registry()
    reg.mark_joined("j", "http://127.0.0.1:7100")
    (peer,) = reg.peers()
    assert (peer.node_id, peer.url, peer.state, peer.joined) == (
        "j",
        "http://127.0.0.1:7100",
        "down",
        True,
    )
    assert peer.coordinator is False
    assert peer.daemon == DaemonInfo(flavor="unknown", healthy=False)
    assert peer.agents == () and peer.seq is None and peer.spool is None
    assert peer.protocol is None and peer.sidecar_version is None and peer.instance_id is None
    assert peer.last_seen_age_s is None
    assert "j" in reg and "x" not in reg


def test_the_age_since_last_seen_is_rounded_to_the_millisecond() -> None:
    """Rule: a peer's `last_seen_age_s` is the silence in seconds, to three decimals."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("a", []), 1)
    clock.advance(1.23456)
    assert reg.peers()[0].last_seen_age_s == 1.235


def test_routes_carry_the_owner_and_policy_and_are_cached_per_version() -> None:
    """Rule: a route names the agent, its owner's node and URL and the agent's read policy
    and group; one claimant is not a collision; `default` entries are skipped wherever they
    stand in a roster; asking twice without a change gives the same answer."""
    reg, _clock = _registry()
    grouped = AgentInfo(id="g", read_policy="group", policy_group="ops")
    reg.apply_heartbeat(
        hb("a", [agent("default"), grouped], url="http://127.0.0.1:7001"),
        1,
    )
    routes, collisions = reg.routing()
    assert routes == (
        RouteEntry(
            agent_id="g",
            node_id="a",
            url="http://127.0.0.1:7001",
            read_policy="group",
            policy_group="ops",
        ),
    )
    assert collisions == ()
    assert reg.routing() == (routes, collisions)
    reg.apply_heartbeat(hb("bb", [grouped]), 1)
    routes, collisions = reg.routing()
    assert [c.agent_id for c in collisions] == ["g"]
    assert isinstance(collisions[0], Collision) and collisions[0].claimants == ("a", "bb")
    assert reg.routing() == (routes, collisions)


def test_find_accepts_trailing_slashes_bare_hosts_and_ipv6() -> None:
    """Rule: a node is found by its URL with or without a trailing slash (on either side), by
    HOST:PORT, or by its bare host, IPv6 literals included; a prefix of a host, or a string
    that is not one URL, finds nothing."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("v6", [], url="http://[fd00::7]:3860"), 1)
    reg.apply_heartbeat(hb("e", [], url="http://edgeX"), 1)
    assert reg.matches("[fd00::7]") == ["v6"]
    assert reg.matches("http://[fd00::7]:3860/") == ["v6"]
    assert reg.matches("edgeX") == ["e"]
    assert reg.matches("http://edgeX/") == ["e"]
    assert reg.matches("edge") == []
    assert reg.matches("[fd00") == []
    reg.apply_heartbeat(hb("s", [], url="http://10.0.0.5:3860/"), 1)
    assert reg.matches("10.0.0.5:3860") == ["s"]
    assert reg.matches("10.0.0.5") == ["s"]
    # A needle is one URL: a host buried in garbage does not name a node.
    assert reg.matches("http://junk://10.0.0.5:3860") == []


def test_the_first_claim_the_registry_saw_owns_the_agent() -> None:
    """Rule (issue 12, replacing the created_at rule): when two nodes claim an agent, the
    one whose claim this registry saw first owns it, even when the later claimant says its
    agent was created earlier or has the smaller node id; the later one is a collision."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("zz", [agent("g", created="2026-02-01T00:00:00Z")]), 1)
    clock.advance(1.0)
    reg.apply_heartbeat(hb("aa", [agent("g", created="2020-01-01T00:00:00Z")]), 1)
    routes, collisions = reg.routing()
    assert [(r.agent_id, r.node_id) for r in routes] == [("g", "zz")]
    assert collisions == (
        Collision(agent_id="g", winner="zz", claimants=("aa", "zz"), rule="first_claim"),
    )


WALL = 1_800_000_000.0  # ManualClock's wall time at the start


def _at(offset: float) -> object:
    """WALL + offset, to the microsecond (pytest.approx's default would allow ~30 minutes)."""
    return pytest.approx(WALL + offset, rel=0, abs=1e-6)


def test_claims_are_stamped_with_the_wall_clock_and_kept_in_order() -> None:
    """Rule (issue 12): the registry stamps each new claim with the wall clock; claims seen
    in one instant are still ordered, one millisecond apart (never pushed further ahead of
    the clock); each is reported once by take_claim_changes for the state DB."""
    reg, _clock = _registry()
    assert reg.has_claim_changes() is False
    reg.apply_heartbeat(hb("a", [agent("alice"), agent("default")]), 1)
    reg.apply_heartbeat(hb("b", [agent("alice"), agent("bob")]), 1)
    assert reg.claims() == {
        "alice": {"a": WALL, "b": _at(0.001)},
        "bob": {"b": _at(0.002)},
    }
    assert reg.has_claim_changes() is True
    changes = reg.take_claim_changes()
    assert changes == {
        ("alice", "a"): WALL,
        ("alice", "b"): _at(0.001),
        ("bob", "b"): _at(0.002),
    }
    assert reg.has_claim_changes() is False and reg.take_claim_changes() == {}


def test_a_roster_without_an_agent_releases_only_that_claim() -> None:
    """Rule: a heartbeat is the node's whole roster: an agent it no longer lists is released
    (reported as None), other nodes' claims on it stay, and an agent nobody claims any more
    leaves the claims."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("g"), agent("solo")]), 1)
    reg.apply_heartbeat(hb("b", [agent("g")]), 1)
    reg.take_claim_changes()
    reg.apply_heartbeat(hb("a", [], seq=2), 1)
    assert reg.claims() == {"g": {"b": _at(0.002)}}
    assert reg.take_claim_changes() == {("g", "a"): None, ("solo", "a"): None}


@pytest.mark.parametrize("how", ["remove", "reap"])
def test_a_node_that_leaves_releases_its_claims(how: str) -> None:
    """Rule: a removed or reaped node's claims are released (reported as None), so it takes
    no agent with it when it comes back later; other claimants keep theirs."""
    reg, clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("g"), agent("solo")]), 1)
    reg.apply_heartbeat(hb("b", [agent("g")]), 1)
    reg.take_claim_changes()
    if how == "remove":
        reg.remove("a")
    else:
        clock.advance(TTL + 1)
        reg.apply_heartbeat(hb("b", [agent("g")], seq=2), 1)
        reg.expire()
        clock.advance(REAP_AFTER + 1)
        reg.apply_heartbeat(hb("b", [agent("g")], seq=3), 1)
        reg.expire()
        assert "a" not in reg
    assert reg.claims() == {"g": {"b": _at(0.002)}}
    assert reg.take_claim_changes() == {("g", "a"): None, ("solo", "a"): None}


def test_stored_claims_are_mirrored_with_the_changes_not_stored_yet() -> None:
    """Rule: set_claims takes the stored (and replicated) claims, drops agents nobody holds,
    and lays the changes seen here but not stored yet on top: a release removes the claim,
    a claim keeps the earlier of the two stamps. Only a real change bumps the version, and a
    new claim is stamped after every stored one."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("x")]), 1)
    reg.apply_heartbeat(hb("a", [agent("y")], seq=2), 1)  # x released, y claimed, unstored
    stored = {
        "x": {"a": WALL - 50, "b": WALL - 40},
        "y": {"a": WALL + 30},
        "z": {"c": WALL + 100},
        "empty": {},
    }
    version = reg.version
    reg.set_claims(stored)
    assert reg.claims() == {
        "x": {"b": WALL - 40},
        "y": {"a": _at(0.001)},
        "z": {"c": WALL + 100},
    }
    assert reg.version > version
    version = reg.version
    reg.set_claims(stored)
    assert reg.version == version
    reg.set_claims({"y": {"a": WALL - 5}})
    assert reg.claims()["y"] == {"a": WALL - 5}
    reg.apply_heartbeat(hb("d", [agent("w")]), 1)
    assert reg.claims()["w"]["d"] == _at(100.001)


def test_a_claim_seen_here_and_not_stored_yet_survives_a_mirror() -> None:
    """Rule: a claim recorded here and not in the stored claims yet is kept by set_claims,
    and a later claim in the same instant is still stamped after it even when every stored
    claim is older; mirroring no stored claims at all clears them."""
    reg, _clock = _registry()
    reg.apply_heartbeat(hb("a", [agent("x")]), 1)
    reg.apply_heartbeat(hb("b", [agent("y")]), 1)
    reg.set_claims({"old": {"c": WALL - 500}})
    assert reg.claims() == {"old": {"c": WALL - 500}, "x": {"a": WALL}, "y": {"b": _at(0.001)}}
    reg.apply_heartbeat(hb("d", [agent("z")]), 1)
    assert reg.claims()["z"] == {"d": _at(0.002)}
    reg.take_claim_changes()
    version = reg.version
    reg.set_claims({})
    assert reg.claims() == {} and reg.version > version


def test_a_stored_claim_at_time_zero_is_still_the_first() -> None:
    """Rule: claims are ordered by their stamp (a stamp of 0.0 included, before any later
    one); a claimant with no recorded claim comes after every recorded one."""
    reg, _clock = _registry()
    reg.set_claims({"g": {"b": 0.0, "a": 0.5}})
    reg.apply_heartbeat(hb("a", [agent("g")]), 1)
    reg.apply_heartbeat(hb("b", [agent("g")]), 1)
    reg.set_claims({"g": {"b": 0.0, "a": 0.5}})
    assert [(r.agent_id, r.node_id) for r in reg.routing()[0]] == [("g", "b")]
