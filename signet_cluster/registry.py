"""The peer registry a coordinator keeps: soft state rebuilt from heartbeats.

Nodes are `alive` while heartbeats arrive within the TTL, then `down` (out of routing);
nodes that were only discovered (never joined) are reaped after `reap_after` more seconds,
joined nodes stay listed as down until removed. Time comes from an injectable monotonic
clock. The routing table maps each non-`default` agent to one owner; when several nodes
claim an agent the same deterministic rule picks the owner on every coordinator.

Ownership is first come, first served *as the registry saw it*: the registry records when it
first saw each node claim each agent (`claims`, persisted and replicated between
coordinators through signet_cluster.admin), and the earliest claim owns the agent. Nothing a
heartbeat says about itself (an agent's `created_at`, the node being a coordinator) moves an
agent; a later claimant is a collision until an operator's `adopt`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from signet_cluster.clock import Clock
from signet_cluster.protocol import (
    AgentInfo,
    Collision,
    DaemonInfo,
    Heartbeat,
    PeerView,
    RouteEntry,
)

LOCAL_AGENT = "default"


@attrs.define(kw_only=True)
class PeerRecord:
    node_id: str
    url: str
    joined: bool = False
    heartbeat: Heartbeat | None = None
    protocol: int | None = None
    last_seen: float | None = None  # monotonic
    down_since: float | None = None  # monotonic
    state: str = "down"
    # The heartbeat's `coordinator: true` was sent with a coordinator credential; a node's
    # own word is not enough to be listed as a coordinator.
    coordinator_proven: bool = False


@attrs.frozen(kw_only=True)
class RegistryEvent:
    kind: str  # "joined_cluster" | "went_down" | "came_back" | "reaped" | "roster_changed"
    node_id: str
    age_s: float | None = None


RULE_FIRST_CLAIM = "first_claim"
RULE_ADOPTED = "adopted"
# agent id -> node id -> when this registry first saw that node claim that agent (wall time).
Claims = Mapping[str, Mapping[str, float]]


class Registry:
    def __init__(self, *, ttl: float, reap_after: float, clock: Clock) -> None:
        self.ttl = ttl
        self.reap_after = reap_after
        self.clock = clock
        self.version = 0
        self._peers: dict[str, PeerRecord] = {}
        self._adoptions: dict[str, str] = {}  # agent id -> node id chosen by an operator
        self._claims: dict[str, dict[str, float]] = {}
        # Claims first seen or released since the owner of this registry last persisted them
        # ((agent, node) -> first-seen time, or None for a release).
        self._claim_changes: dict[tuple[str, str], float | None] = {}
        self._latest_claim = 0.0  # the newest `since` handed out here (claims stay ordered)
        self._routes_cache: tuple[int, tuple[tuple[RouteEntry, ...], tuple[Collision, ...]]] | None
        self._routes_cache = None

    # -- changes -------------------------------------------------------------------------
    def _bump(self) -> None:
        self.version += 1

    def apply_heartbeat(
        self, hb: Heartbeat, protocol: int, *, coordinator_proven: bool = False
    ) -> list[RegistryEvent]:
        """Apply one heartbeat; `coordinator_proven` when it came with a coordinator
        credential (only then does its `coordinator: true` make it a listed coordinator)."""
        now = self.clock.monotonic()
        events: list[RegistryEvent] = []
        record = self._peers.get(hb.node_id)
        if record is None:
            record = PeerRecord(node_id=hb.node_id, url=hb.url)
            self._peers[hb.node_id] = record
            events.append(RegistryEvent(kind="joined_cluster", node_id=hb.node_id))
            self._bump()
        previous = record.heartbeat
        if record.state != "alive":
            if previous is not None:
                events.append(RegistryEvent(kind="came_back", node_id=hb.node_id))
            record.state = "alive"
            record.down_since = None
            self._bump()
        if (
            previous is None
            or previous.agents != hb.agents
            or previous.daemon != hb.daemon
            or previous.url != hb.url
            or previous.instance_id != hb.instance_id
            or previous.coordinator != hb.coordinator
            or record.coordinator_proven != coordinator_proven
            or previous.sidecar_version != hb.sidecar_version
            or previous.spool != hb.spool
        ):
            if previous is not None and previous.agents != hb.agents:
                events.append(RegistryEvent(kind="roster_changed", node_id=hb.node_id))
            self._bump()
        elif previous is not None:
            # Nothing the registry shows changed: keep the stored objects and let this
            # heartbeat's copies die young. Otherwise a coordinator promotes ~10 objects per
            # node per second into the oldest GC generation, whose collections then take
            # 100+ ms with a thousand nodes (bench/capacity.py).
            hb = attrs.evolve(
                hb, agents=previous.agents, daemon=previous.daemon, spool=previous.spool
            )
        if previous is None or previous.agents is not hb.agents:
            self._observe_claims(hb.node_id, hb.agents)
        record.heartbeat = hb
        record.coordinator_proven = coordinator_proven
        record.url = hb.url
        record.protocol = protocol
        record.last_seen = now
        return events

    # -- claims --------------------------------------------------------------------------
    def _claim_time(self) -> float:
        """Now, strictly after every claim recorded here: two claims seen one after the
        other are ordered even when the wall clock did not move (or moved back)."""
        self._latest_claim = max(self.clock.time(), self._latest_claim + 0.001)
        return self._latest_claim

    def _observe_claims(self, node_id: str, agents: Iterable[AgentInfo]) -> None:
        """Record the agents this node claims for the first time, and release the ones its
        roster no longer lists (a live heartbeat is the node's whole roster)."""
        listed = {a.id for a in agents if a.id != LOCAL_AGENT}
        changed = False
        for agent_id in sorted(listed):
            held = self._claims.setdefault(agent_id, {})
            if node_id not in held:
                held[node_id] = self._claim_time()
                self._claim_changes[(agent_id, node_id)] = held[node_id]
                changed = True
        for agent_id, held in list(self._claims.items()):
            if node_id in held and agent_id not in listed:
                del held[node_id]
                if not held:
                    del self._claims[agent_id]
                self._claim_changes[(agent_id, node_id)] = None
                changed = True
        if changed:
            self._bump()

    def _release_node(self, node_id: str) -> None:
        for agent_id, held in list(self._claims.items()):
            if held.pop(node_id, None) is not None:
                self._claim_changes[(agent_id, node_id)] = None
                if not held:
                    del self._claims[agent_id]

    def take_claim_changes(self) -> dict[tuple[str, str], float | None]:
        """Claims recorded or released since the last call (for the state DB and the other
        coordinators)."""
        changes, self._claim_changes = self._claim_changes, {}
        return changes

    def set_claims(self, held: Claims) -> None:
        """Mirror the persisted (and replicated) claims, plus the changes seen here that
        are not persisted yet. Stored claims of nodes not heard from since a restart are
        kept, so whoever heartbeats first after a restart does not take their agents."""
        merged = {agent: dict(nodes) for agent, nodes in held.items() if nodes}
        for (agent_id, node_id), since in self._claim_changes.items():
            nodes = merged.setdefault(agent_id, {})
            if since is None:
                nodes.pop(node_id, None)
            else:
                nodes[node_id] = min(since, nodes.get(node_id, since))
            if not nodes:
                del merged[agent_id]
        if merged != self._claims:
            self._claims = merged
            newest = (t for held in merged.values() for t in held.values())
            self._latest_claim = max(self._latest_claim, *newest, 0.0)
            self._bump()

    def has_claim_changes(self) -> bool:
        return bool(self._claim_changes)

    def claims(self) -> dict[str, dict[str, float]]:
        return {agent: dict(held) for agent, held in self._claims.items()}

    def mark_joined(self, node_id: str, url: str) -> bool:
        """Record a joined peer (idempotent). Returns True when something changed."""
        record = self._peers.get(node_id)
        if record is None:
            self._peers[node_id] = PeerRecord(
                node_id=node_id, url=url, joined=True, down_since=self.clock.monotonic()
            )
            self._bump()
            return True
        # A node that heartbeats is where its heartbeats say; the decision's URL only
        # stands in until then.
        moved = record.heartbeat is None and record.url != url
        if not record.joined or moved:
            record.joined = True
            if moved:
                record.url = url
            self._bump()
            return True
        return False

    def restore_seen(self, node_id: str, url: str) -> bool:
        """A node a previous run of this coordinator knew (persisted by the coordinator):
        listed as down until it heartbeats, so a host that stopped heartbeating while this
        coordinator was away is shown, not silently missing. Reaped like any discovered
        node if it never returns."""
        if node_id in self._peers:
            return False
        self._peers[node_id] = PeerRecord(
            node_id=node_id, url=url, down_since=self.clock.monotonic()
        )
        self._bump()
        return True

    def addresses(self) -> dict[str, str]:
        """node id -> URL of every registered node."""
        return {r.node_id: r.url for r in self._peers.values()}

    def remove(self, node_id: str) -> bool:
        if self._peers.pop(node_id, None) is None:
            return False
        self._release_node(node_id)
        self._bump()
        return True

    def set_adoptions(self, adoptions: Mapping[str, str]) -> None:
        if adoptions != self._adoptions:
            self._adoptions = dict(adoptions)
            self._bump()

    def expire(self) -> list[RegistryEvent]:
        """Move silent peers to down and reap long-gone discovered ones."""
        now = self.clock.monotonic()
        events: list[RegistryEvent] = []
        for record in list(self._peers.values()):
            if record.state == "alive" and record.last_seen is not None:
                age = now - record.last_seen
                if age > self.ttl:
                    record.state = "down"
                    record.down_since = now
                    events.append(
                        RegistryEvent(kind="went_down", node_id=record.node_id, age_s=age)
                    )
                    self._bump()
            elif record.state == "down" and not record.joined:
                since = record.down_since if record.down_since is not None else now
                if now - since > self.reap_after:
                    del self._peers[record.node_id]
                    self._release_node(record.node_id)
                    silent = now - record.last_seen if record.last_seen is not None else None
                    events.append(
                        RegistryEvent(kind="reaped", node_id=record.node_id, age_s=silent)
                    )
                    self._bump()
        return events

    # -- reads ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._peers

    def record(self, node_id: str) -> PeerRecord | None:
        return self._peers.get(node_id)

    def matches(self, needle: str) -> list[str]:
        """Node ids matching a node id, a URL, HOST:PORT, or a bare host."""
        if needle in self._peers:
            return [needle]
        bare = needle.split("://", 1)[-1].rstrip("/")
        found = []
        for record in self._peers.values():
            host_port = record.url.split("://", 1)[-1].rstrip("/")
            host = host_port.rsplit(":", 1)[0]
            if bare in (host_port, host):
                found.append(record.node_id)
        return sorted(found)

    def find(self, needle: str) -> PeerRecord | None:
        """The one peer `needle` names, or None when it names none or several."""
        found = self.matches(needle)
        return self._peers[found[0]] if len(found) == 1 else None

    def peers(self) -> list[PeerView]:
        now = self.clock.monotonic()
        return [self._view(r, now) for r in sorted(self._peers.values(), key=lambda r: r.node_id)]

    def _view(self, record: PeerRecord, now: float) -> PeerView:
        hb = record.heartbeat
        daemon = hb.daemon if hb else DaemonInfo(flavor="unknown", healthy=False)
        if hb is not None and record.state != "alive" and daemon.healthy:
            # Its daemon's last report is stale once the node is down: never vouch for it.
            daemon = attrs.evolve(
                daemon, healthy=False, error="node is down: its daemon's health is unknown"
            )
        return PeerView(
            node_id=record.node_id,
            url=record.url,
            state=record.state,
            joined=record.joined,
            coordinator=bool(hb and hb.coordinator and record.coordinator_proven),
            protocol=record.protocol,
            sidecar_version=hb.sidecar_version if hb else None,
            instance_id=hb.instance_id if hb else None,
            daemon=daemon,
            agents=hb.agents if hb else (),
            last_seen_age_s=round(now - record.last_seen, 3)
            if record.last_seen is not None
            else None,
            seq=hb.seq if hb else None,
            spool=hb.spool if hb else None,
        )

    def routing(self) -> tuple[tuple[RouteEntry, ...], tuple[Collision, ...]]:
        """(routes to alive owners, collisions). Cached per registry version."""
        if self._routes_cache is not None and self._routes_cache[0] == self.version:
            return self._routes_cache[1]
        result = compute_routing(self.peers(), self._adoptions, self._claims)
        self._routes_cache = (self.version, result)
        return result


def _first_claim(
    claimants: list[tuple[PeerView, AgentInfo]], seen: Mapping[str, float]
) -> tuple[PeerView, AgentInfo]:
    def order(claim: tuple[PeerView, AgentInfo]) -> tuple[bool, float, str]:
        since = seen.get(claim[0].node_id)
        return (since is None, since or 0.0, claim[0].node_id)

    return min(claimants, key=order)


def compute_routing(
    peers: Iterable[PeerView], adoptions: Mapping[str, str], claims: Claims
) -> tuple[tuple[RouteEntry, ...], tuple[Collision, ...]]:
    """Pick one owner per agent among the nodes that list it.

    Every claimant that is still registered (alive or down) takes part, so an owner that is
    briefly down keeps its agents instead of handing them to another node (which would put
    writes for one agent on two daemons), and a down claimant never takes an agent from a
    live owner. The rule, identical on every coordinator: an operator adoption naming a
    claimant wins; otherwise the claim the registry saw first (`claims`; a claimant with no
    recorded claim comes after every recorded one), then the smallest node id. Only alive
    owners get a route.
    """
    hosting: dict[str, list[tuple[PeerView, AgentInfo]]] = {}
    for peer in peers:
        for agent in peer.agents:
            if agent.id == LOCAL_AGENT:
                continue
            hosting.setdefault(agent.id, []).append((peer, agent))
    routes: list[RouteEntry] = []
    collisions: list[Collision] = []
    for agent_id in sorted(hosting):
        claimants = hosting[agent_id]
        adopted = adoptions.get(agent_id)
        chosen = [c for c in claimants if c[0].node_id == adopted]
        if chosen:
            winner, rule = chosen[0], RULE_ADOPTED
        else:
            winner, rule = _first_claim(claimants, claims.get(agent_id, {})), RULE_FIRST_CLAIM
        if len(claimants) > 1:
            collisions.append(
                Collision(
                    agent_id=agent_id,
                    winner=winner[0].node_id,
                    claimants=tuple(sorted(c[0].node_id for c in claimants)),
                    rule=rule,
                )
            )
        peer, agent = winner
        if peer.state == "alive":
            routes.append(
                RouteEntry(
                    agent_id=agent_id,
                    node_id=peer.node_id,
                    url=peer.url,
                    read_policy=agent.read_policy,
                    policy_group=agent.policy_group,
                )
            )
    return tuple(routes), tuple(collisions)
