"""Operator decisions every coordinator must agree on: which nodes were joined or removed,
and which node owns a contested agent (`adopt`); and, beside them, the agent claims the
coordinators have seen (who held each agent first, signet_cluster.registry).

Each entry carries the wall-clock time it was made; coordinators exchange their whole
state and keep, per node and per agent, the newest entry (last writer wins). That makes
replication idempotent and order-independent: a push that fails is repaired by the next
periodic pull. Clock skew between coordinators can only reorder decisions taken within
the skew of each other, which operators do not do to one node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from signet_cluster.protocol import PeerView, valid_agent_id, valid_http_url, valid_node_id
from signet_cluster.registry import Claims, compute_routing

MEMBERSHIP_STATES = ("joined", "removed")


@attrs.frozen(kw_only=True)
class NodeDecision:
    node_id: str = attrs.field(validator=valid_node_id)
    url: str | None = attrs.field(validator=attrs.validators.optional(valid_http_url))
    state: str = attrs.field(validator=attrs.validators.in_(MEMBERSHIP_STATES))
    at: float


@attrs.frozen(kw_only=True)
class Adoption:
    """`node_id` None means the adoption was cleared (back to the automatic rule)."""

    agent_id: str = attrs.field(validator=valid_agent_id)
    node_id: str | None = attrs.field(validator=attrs.validators.optional(valid_node_id))
    at: float


@attrs.frozen(kw_only=True)
class Claim:
    """When a coordinator first saw `node_id` claim `agent_id` (`since`), or that it no
    longer does (`since` None). `at` is when that was observed, for last-writer-wins."""

    agent_id: str = attrs.field(validator=valid_agent_id)
    node_id: str = attrs.field(validator=valid_node_id)
    since: float | None
    at: float


@attrs.frozen(kw_only=True)
class AdminState:
    nodes: tuple[NodeDecision, ...] = ()
    adoptions: tuple[Adoption, ...] = ()
    claims: tuple[Claim, ...] = ()

    def joined(self) -> dict[str, str]:
        return {n.node_id: n.url or "" for n in self.nodes if n.state == "joined"}

    def removed(self) -> set[str]:
        return {n.node_id for n in self.nodes if n.state == "removed"}

    def active_adoptions(self) -> dict[str, str]:
        return {a.agent_id: a.node_id for a in self.adoptions if a.node_id is not None}

    def held_claims(self) -> dict[str, dict[str, float]]:
        held: dict[str, dict[str, float]] = {}
        for claim in self.claims:
            if claim.since is not None:
                held.setdefault(claim.agent_id, {})[claim.node_id] = claim.since
        return held


def _newest_nodes(entries: Iterable[NodeDecision]) -> dict[str, NodeDecision]:
    best: dict[str, NodeDecision] = {}
    for entry in entries:
        current = best.get(entry.node_id)
        # Ties break on the state name so every coordinator picks the same entry.
        if current is None or (entry.at, entry.state) > (current.at, current.state):
            best[entry.node_id] = entry
    return best


def _newest_adoptions(entries: Iterable[Adoption]) -> dict[str, Adoption]:
    best: dict[str, Adoption] = {}
    for entry in entries:
        current = best.get(entry.agent_id)
        if current is None or (entry.at, entry.node_id or "") > (current.at, current.node_id or ""):
            best[entry.agent_id] = entry
    return best


def merge_claim(a: Claim, b: Claim) -> Claim:
    """Two records of one (agent, node) claim. Both held: the earliest sighting wins (the
    coordinator that saw it first). Otherwise the newer observation wins (a release after
    the claim, or a new claim after a release); ties go to the release."""
    if a.since is not None and b.since is not None:
        return attrs.evolve(a, since=min(a.since, b.since), at=max(a.at, b.at))
    return max(a, b, key=lambda c: (c.at, c.since is None, c.since or 0.0))


def _merged_claims(entries: Iterable[Claim]) -> dict[tuple[str, str], Claim]:
    best: dict[tuple[str, str], Claim] = {}
    for entry in entries:
        key = (entry.agent_id, entry.node_id)
        current = best.get(key)
        best[key] = entry if current is None else merge_claim(current, entry)
    return best


def merge(local: AdminState, remote: AdminState) -> AdminState:
    """The union of both states, newest entry per node and per agent, earliest sighting
    per held claim."""
    nodes = _newest_nodes([*local.nodes, *remote.nodes])
    adoptions = _newest_adoptions([*local.adoptions, *remote.adoptions])
    claims = _merged_claims([*local.claims, *remote.claims])
    return AdminState(
        nodes=tuple(nodes[k] for k in sorted(nodes)),
        adoptions=tuple(adoptions[k] for k in sorted(adoptions)),
        claims=tuple(claims[k] for k in sorted(claims)),
    )


@attrs.frozen(kw_only=True)
class Ownership:
    """Who owns an agent under a set of adoptions, and with which read policy (the owner's
    roster entry decides what the agent may read cluster-wide)."""

    owner: str | None
    read_policy: str | None
    policy_group: str | None

    def policy_text(self) -> str:
        if self.read_policy == "group":
            return f"group:{self.policy_group or '-'}"
        return self.read_policy or "none"


def ownership(
    peers: Iterable[PeerView], adoptions: Mapping[str, str], claims: Claims, agent_id: str
) -> Ownership:
    """The owner the routing rule picks for `agent_id` (alive or not) and its policy, given
    the first claims the registry saw (`Registry.claims()`)."""
    peer_list = list(peers)
    routes, collisions = compute_routing(peer_list, adoptions, claims)
    owner = next((r.node_id for r in routes if r.agent_id == agent_id), None)
    if owner is None:
        owner = next((c.winner for c in collisions if c.agent_id == agent_id), None)
    if owner is None:
        owner = next((p.node_id for p in peer_list for a in p.agents if a.id == agent_id), None)
    for peer in peer_list:
        if peer.node_id == owner:
            for agent in peer.agents:
                if agent.id == agent_id:
                    return Ownership(
                        owner=owner, read_policy=agent.read_policy, policy_group=agent.policy_group
                    )
    return Ownership(owner=owner, read_policy=None, policy_group=None)
