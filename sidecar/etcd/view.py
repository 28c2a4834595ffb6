"""The etcd backend's data: the key layout under `etcd_prefix`, the records stored there, a
local copy of every key (kept current by the watch), and the cluster view built from it.

Layout (every value is JSON):

- `members/<node_id>`  persistent: url, first registration time, last heartbeat. A node
  whose lease expired is still listed (as `down`) until `signet-cluster remove`.
- `nodes/<node_id>`    the node's latest `Heartbeat`, attached to its lease: it vanishes
  when the node stops renewing, which is what makes a node `down`.
- `claims/<agent_id>`  `{"node_id": owner}`, created by compare-and-swap (create revision
  0), so the first claim wins and every sidecar agrees. Persistent, so an owner that is
  briefly down keeps its agents. `default` is never claimed.
- `adoptions/<agent_id>` `{"node_id": ...}` (or the bare node id, for `etcdctl put`): an
  operator override that beats the claim when that node hosts the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

import attrs

from sidecar.membership.view import ClusterView
from signet_cluster.converter import structure, unstructure
from signet_cluster.errors import ClusterError
from signet_cluster.etcd.client import KeyValue, WatchEvent
from signet_cluster.protocol import (
    AgentInfo,
    Collision,
    DaemonInfo,
    Heartbeat,
    PeerView,
    ProtocolRange,
    RouteEntry,
)
from signet_cluster.registry import LOCAL_AGENT

KINDS = ("members", "nodes", "claims", "adoptions")
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RULE_CLAIM = "first_claim"
RULE_ADOPTED = "adopted"


@attrs.frozen
class Layout:
    prefix: str

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    def member(self, node_id: str) -> str:
        return self.key("members", node_id)

    def node(self, node_id: str) -> str:
        return self.key("nodes", node_id)

    def claim(self, agent_id: str) -> str:
        return self.key("claims", agent_id)

    def adoption(self, agent_id: str) -> str:
        return self.key("adoptions", agent_id)

    def split(self, key: str) -> tuple[str, str] | None:
        """(kind, name) of a key of ours, None for anything else under the prefix."""
        if not key.startswith(self.prefix):
            return None
        kind, _, name = key[len(self.prefix) :].partition("/")
        return (kind, name) if kind in KINDS and name and "/" not in name else None


@attrs.frozen(kw_only=True)
class MemberRecord:
    node_id: str
    url: str
    first_seen: float  # wall clock
    heartbeat: Heartbeat | None = None


@attrs.frozen(kw_only=True)
class OwnerRecord:
    """The value of a claim or an adoption."""

    node_id: str
    at: float | None = None


def encode(record: object) -> bytes:
    return json.dumps(unstructure(record), separators=(",", ":")).encode()


def decode(kind: str, raw: bytes) -> MemberRecord | Heartbeat | OwnerRecord:
    """A stored value as its record; raises ClusterError describing what is wrong."""
    text = raw.decode("utf-8", "replace")
    if kind in ("claims", "adoptions") and _NODE_ID.match(text.strip()):
        return OwnerRecord(node_id=text.strip())  # a bare node id, as an operator writes it
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"not JSON: {exc}") from None
    cls: type[MemberRecord | Heartbeat | OwnerRecord] = {
        "members": MemberRecord,
        "nodes": Heartbeat,
        "claims": OwnerRecord,
        "adoptions": OwnerRecord,
    }[kind]
    return structure(data, cls, path=kind)


@attrs.define
class Entry:
    kv: KeyValue
    record: MemberRecord | Heartbeat | OwnerRecord | None
    problem: str | None = None


class EtcdCache:
    """Every key of ours under the prefix, as of `revision` (the newest change seen)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.entries: dict[tuple[str, str], Entry] = {}
        self.revision = 0
        self.changes = 0  # bumped on every change, so views are rebuilt only when needed
        self.problems: list[tuple[str, str]] = []  # (key, problem) not yet logged

    def replace(self, kvs: Iterable[KeyValue], revision: int) -> None:
        self.entries.clear()
        for kv in kvs:
            self._put(kv)
        self.revision = revision
        self.changes += 1

    def apply(self, events: Iterable[WatchEvent]) -> bool:
        """Apply watch events; True when something of ours changed."""
        changed = False
        for event in events:
            self.revision = max(self.revision, event.kv.mod_revision)
            where = self.layout.split(event.kv.key)
            if where is None:
                continue
            if event.type == "delete":
                changed |= self.entries.pop(where, None) is not None
            else:
                self._put(event.kv)
                changed = True
        self.changes += changed
        return changed

    def _put(self, kv: KeyValue) -> None:
        where = self.layout.split(kv.key)
        if where is None:
            return
        kind, _name = where
        try:
            self.entries[where] = Entry(kv, decode(kind, kv.value))
        except ClusterError as exc:
            self.entries[where] = Entry(kv, None, exc.message)
            self.problems.append((kv.key, exc.message))

    def get(self, kind: str, name: str) -> Entry | None:
        return self.entries.get((kind, name))

    def of_kind(self, kind: str) -> dict[str, Entry]:
        return {name: e for (k, name), e in self.entries.items() if k == kind}

    def owners(self, kind: str) -> dict[str, str]:
        """agent id -> node id for claims or adoptions."""
        return {
            name: e.record.node_id
            for name, e in self.of_kind(kind).items()
            if isinstance(e.record, OwnerRecord)
        }

    def members(self) -> dict[str, MemberRecord]:
        return {
            name: e.record
            for name, e in self.of_kind("members").items()
            if isinstance(e.record, MemberRecord)
        }

    def alive(self) -> dict[str, Entry]:
        return self.of_kind("nodes")


def owner_of(raw: bytes) -> str | None:
    """The node id a claim or adoption value names, None when unreadable."""
    try:
        record = decode("claims", raw)
    except ClusterError:
        return None
    return record.node_id if isinstance(record, OwnerRecord) else None


def peer_views(cache: EtcdCache, ours: ProtocolRange) -> tuple[PeerView, ...]:
    """Every node etcd knows: alive while its leased `nodes/` key exists, else down."""
    members = cache.members()
    alive = cache.alive()
    views = []
    for node_id in sorted(set(members) | set(alive)):
        member = members.get(node_id)
        live = alive.get(node_id)
        heartbeat = live.record if live is not None else None
        if not isinstance(heartbeat, Heartbeat):
            # Down, or an unreadable heartbeat: fall back to the last one the member kept.
            heartbeat = member.heartbeat if member is not None else None
        url = heartbeat.url if heartbeat else member.url if member else ""
        views.append(
            PeerView(
                node_id=node_id,
                url=url,
                state="alive" if live is not None else "down",
                joined=member is not None,
                coordinator=False,
                protocol=ours.negotiate(heartbeat.protocol) if heartbeat else None,
                sidecar_version=heartbeat.sidecar_version if heartbeat else None,
                instance_id=heartbeat.instance_id if heartbeat else None,
                daemon=heartbeat.daemon if heartbeat else DaemonInfo(flavor="unknown"),
                agents=heartbeat.agents if heartbeat else (),
                # etcd keeps no per-node receive time; a lease only says "still renewed".
                last_seen_age_s=None,
                seq=heartbeat.seq if heartbeat else None,
                spool=heartbeat.spool if heartbeat else None,
            )
        )
    return tuple(views)


def claim_routing(
    peers: Iterable[PeerView], claims: Mapping[str, str], adoptions: Mapping[str, str]
) -> tuple[tuple[RouteEntry, ...], tuple[Collision, ...]]:
    """One owner per agent, the same on every sidecar: an adoption naming a node that hosts
    the agent, else the first claim (etcd's compare-and-swap decided it). Only an alive owner
    that speaks a common protocol and lists the agent gets a route; an agent nobody has
    claimed yet has none. Hosts and the claim holder that disagree are a collision."""
    hosts: dict[str, dict[str, tuple[PeerView, AgentInfo]]] = {}
    for peer in peers:
        for agent in peer.agents:
            if agent.id != LOCAL_AGENT:
                hosts.setdefault(agent.id, {})[peer.node_id] = (peer, agent)
    routes: list[RouteEntry] = []
    collisions: list[Collision] = []
    for agent_id in sorted(set(hosts) | set(claims)):
        if agent_id == LOCAL_AGENT:
            continue
        by_node = hosts.get(agent_id, {})
        adopted = adoptions.get(agent_id)
        if adopted is not None and adopted in by_node:
            owner, rule = adopted, RULE_ADOPTED
        elif agent_id in claims:
            owner, rule = claims[agent_id], RULE_CLAIM
        else:
            continue
        claimants = set(by_node) | ({claims[agent_id]} if agent_id in claims else set())
        if len(claimants) > 1:
            collisions.append(
                Collision(
                    agent_id=agent_id, winner=owner, claimants=tuple(sorted(claimants)), rule=rule
                )
            )
        if owner in by_node:
            peer, info = by_node[owner]
            if peer.alive and peer.protocol is not None:
                routes.append(
                    RouteEntry(
                        agent_id=agent_id,
                        node_id=owner,
                        url=peer.url,
                        read_policy=info.read_policy,
                        policy_group=info.policy_group,
                    )
                )
    return tuple(routes), tuple(collisions)


def build_view(cache: EtcdCache, ours: ProtocolRange, received_at: float) -> ClusterView:
    peers = peer_views(cache, ours)
    routes, collisions = claim_routing(peers, cache.owners("claims"), cache.owners("adoptions"))
    return ClusterView(
        source="etcd",
        coordinator_id="etcd",
        registry=f"etcd:{cache.revision}",
        peers=peers,
        routes=routes,
        collisions=collisions,
        coordinators=(),
        received_at=received_at,
    )


def matches(peers: Iterable[PeerView], needle: str) -> list[str]:
    """Node ids matching a node id, a URL, HOST:PORT or a bare host (as `remove` takes)."""
    peers = list(peers)
    if any(p.node_id == needle for p in peers):
        return [needle]
    bare = needle.split("://", 1)[-1].rstrip("/")
    found = []
    for peer in peers:
        host_port = peer.url.split("://", 1)[-1].rstrip("/")
        if bare in (host_port, host_port.rsplit(":", 1)[0]):
            found.append(peer.node_id)
    return sorted(found)
