"""The view each sidecar builds from its copy of etcd: peers and routes from the records
alone (no etcd needed), compared with what a coordinator's registry answers."""

from __future__ import annotations

import attrs

from sidecar.etcd.view import EtcdCache, Layout, MemberRecord, OwnerRecord, build_view, encode
from signet_cluster.clock import ManualClock
from signet_cluster.etcd.client import KeyValue
from signet_cluster.protocol import (
    AgentInfo,
    DaemonInfo,
    Heartbeat,
    ProtocolRange,
    SpoolSummary,
)
from signet_cluster.registry import Registry

LAYOUT = Layout("/signet-cluster/")


def heartbeat(node: str, agents: list[AgentInfo], spool: SpoolSummary | None = None) -> Heartbeat:
    return Heartbeat(
        protocol=ProtocolRange(min=1, max=1),
        node_id=node,
        instance_id="i-" + node,
        url=f"http://127.0.0.1:{7000 + ord(node[0])}",
        sidecar_version="0.1.0",
        daemon=DaemonInfo(flavor="ts", version="0.145.7", healthy=True),
        agents=tuple(agents),
        seq=1,
        sent_at=1.0,
        spool=spool,
    )


def agent(name: str, created: str) -> AgentInfo:
    return AgentInfo(id=name, read_policy="shared", created_at=created)


class Records:
    """What etcd would hold: member records, leased heartbeats, claims, adoptions."""

    def __init__(self) -> None:
        self.kvs: list[KeyValue] = []

    def put(self, key: str, value: object, lease: int = 0) -> None:
        revision = len(self.kvs) + 1
        self.kvs.append(
            KeyValue(
                key=key,
                value=encode(value),
                create_revision=revision,
                mod_revision=revision,
                version=1,
                lease=lease,
            )
        )

    def node(self, hb: Heartbeat, *, alive: bool = True) -> None:
        self.put(
            LAYOUT.member(hb.node_id),
            MemberRecord(node_id=hb.node_id, url=hb.url, first_seen=1.0, heartbeat=hb),
        )
        if alive:
            self.put(LAYOUT.node(hb.node_id), hb, lease=7)

    def cache(self) -> EtcdCache:
        cache = EtcdCache(LAYOUT)
        cache.replace(self.kvs, len(self.kvs))
        return cache


def test_the_view_carries_each_nodes_spool() -> None:
    """A node's spool (writes held for unreachable owners) reaches every sidecar's view, alive
    or down, as it does through a coordinator, so `status` and the topology page show it."""
    spool = SpoolSummary(depth=3, bytes=120, oldest_at=1700000000.0)
    records = Records()
    records.node(heartbeat("a", [], spool))
    records.node(heartbeat("b", [], spool), alive=False)
    view = build_view(records.cache(), ProtocolRange.ours(), 0.0)
    assert {p.node_id: (p.state, p.spool) for p in view.peers} == {
        "a": ("alive", spool),
        "b": ("down", spool),
    }


def test_routes_follow_the_coordinators_rules() -> None:
    """Given the same heartbeats, and claims that agree with the coordinator's choice, the etcd
    view routes exactly as a coordinator does: an adoption beats the claim, `default` is never
    routed, and an owner that is down keeps its agents unrouted (no other host takes them)."""
    early, late = "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z"
    a = heartbeat("a", [agent("default", early), agent("x", early), agent("y", late)])
    b = heartbeat("b", [agent("default", early), agent("x", late), agent("y", early)])
    c = heartbeat("c", [agent("z", early), agent("w", early)])
    d = heartbeat("d", [agent("w", late)])
    clock = ManualClock()
    registry = Registry(ttl=5.0, reap_after=600.0, clock=clock)
    for hb in (a, b, c, d):
        registry.apply_heartbeat(hb, 1)
    clock.advance(3.0)
    for hb in (a, b, d):
        registry.apply_heartbeat(attrs.evolve(hb, seq=2), 1)
    clock.advance(3.0)
    registry.expire()  # c went silent: down, still registered
    registry.set_adoptions({"y": "a"})

    records = Records()
    for hb in (a, b, d):
        records.node(hb)
    records.node(c, alive=False)
    # First claims as a coordinator would have picked them (earliest created_at).
    for agent_id, owner in {"x": "a", "y": "b", "z": "c", "w": "c"}.items():
        records.put(LAYOUT.claim(agent_id), OwnerRecord(node_id=owner))
    records.put(LAYOUT.claim("default"), OwnerRecord(node_id="b"))  # ignored, as `default`
    records.put(LAYOUT.adoption("y"), OwnerRecord(node_id="a"))
    view = build_view(records.cache(), ProtocolRange.ours(), 0.0)

    routes, collisions = registry.routing()
    expected = {r.agent_id: (r.node_id, r.url, r.read_policy) for r in routes}
    assert {r.agent_id: (r.node_id, r.url, r.read_policy) for r in view.routes} == expected
    assert expected == {"x": ("a", a.url, "shared"), "y": ("a", a.url, "shared")}
    assert [(c.agent_id, c.winner, c.claimants) for c in view.collisions] == [
        (c.agent_id, c.winner, c.claimants) for c in collisions
    ]
    assert {p.node_id: p.state for p in view.peers} == {
        p.node_id: p.state for p in registry.peers()
    }
