"""`explain AGENT`: where an agent lives, who can read its memories, what it reads, and why
a read would miss. Pure: it works on a `ClusterPicture` (the status document any sidecar
serves) and does no I/O.

The read rules are the daemon's (contract §2) inside one daemon, and DESIGN §7 across nodes:

- an agent reads all its own memories except archived ones, on its owner;
- on the owner's daemon, a `shared` agent reads every agent's `global` memories and a
  `group` G agent reads the `global` memories of agents whose `policy_group` is G, whatever
  their own policy (so an isolated agent's global memories are still seen by the shared
  agents of its own node);
- across nodes, only `global` memories of agents that are not `isolated` travel: a shared
  reader gets them from every other node, a group G reader those of G's members;
- private and archived memories never leave their node; `default` is node-local.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .converter import structure
from .protocol import AgentInfo, Collision, DaemonInfo, PeerView, RouteEntry

LOCAL_AGENT = "default"


@attrs.frozen(kw_only=True)
class ClusterPicture:
    """The cluster as one sidecar sees it (`GET /api/cluster/status`)."""

    peers: tuple[PeerView, ...]
    routes: tuple[RouteEntry, ...] = ()
    collisions: tuple[Collision, ...] = ()
    table_age_s: float | None = None
    stale: bool = False

    @classmethod
    def from_status(cls, body: Mapping[str, Any]) -> ClusterPicture:
        view = body.get("view") or {}
        return cls(
            peers=tuple(
                structure(n, PeerView, f"nodes[{i}]") for i, n in enumerate(body.get("nodes", []))
            ),
            routes=tuple(
                structure(r, RouteEntry, f"routes[{i}]")
                for i, r in enumerate(body.get("routes", []))
            ),
            collisions=tuple(
                structure(c, Collision, f"collisions[{i}]")
                for i, c in enumerate(body.get("collisions", []))
            ),
            table_age_s=view.get("age_s"),
            stale=bool(view.get("stale")),
        )

    def peer(self, node_id: str) -> PeerView | None:
        return next((p for p in self.peers if p.node_id == node_id), None)

    def owner_of(self, agent_id: str) -> str | None:
        """The node whose daemon answers for `agent_id` (alive or not), by the same rule the
        coordinators use: the route, else the collision winner, else the only claimant."""
        for route in self.routes:
            if route.agent_id == agent_id:
                return route.node_id
        for collision in self.collisions:
            if collision.agent_id == agent_id:
                return collision.winner
        claimants = [p.node_id for p in self.peers if any(a.id == agent_id for a in p.agents)]
        return claimants[0] if len(claimants) == 1 else None


@attrs.frozen(kw_only=True)
class Reader:
    """An agent that can read some of the explained agent's memories."""

    agent_id: str
    node_id: str
    read_policy: str
    policy_group: str | None
    scope: str  # "own": everything but archived; "global": global memories only
    why: str


@attrs.frozen(kw_only=True)
class Source:
    """Memories the explained agent reads from one node."""

    node_id: str
    state: str
    healthy: bool
    scope: str  # "own" or "global"
    agents: tuple[str, ...]  # whose memories


@attrs.frozen(kw_only=True)
class Explanation:
    agent_id: str
    known: bool
    owner: str | None = None
    owner_url: str | None = None
    owner_state: str | None = None
    owner_daemon: DaemonInfo | None = None
    last_heartbeat_age_s: float | None = None
    read_policy: str | None = None
    policy_group: str | None = None
    route: RouteEntry | None = None
    collision: Collision | None = None
    readers: tuple[Reader, ...] = ()
    reads: tuple[Source, ...] = ()
    misses: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    table_age_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.known and not self.misses


def _effective(policy: str, group: str | None) -> str:
    # The daemon reads `group` without a group, and unknown policies, as isolated.
    if policy == "group" and group is None:
        return "isolated"
    return policy if policy in ("shared", "group") else "isolated"


def _answered_here(picture: ClusterPicture, node: PeerView, agent: AgentInfo) -> bool:
    """True when `node`'s daemon answers for `agent` (it is the owner, or `default`)."""
    return agent.id == LOCAL_AGENT or picture.owner_of(agent.id) == node.node_id


def _health(node: PeerView) -> tuple[bool, str]:
    if node.state != "alive":
        age = node.last_seen_age_s
        since = f", last heartbeat {age:.1f}s ago" if age is not None else ""
        return False, f"node {node.node_id} is {node.state}{since}"
    if not node.daemon.healthy:
        error = f": {node.daemon.error}" if node.daemon.error else ""
        return False, f"the daemon on {node.node_id} is unhealthy{error}"
    return True, ""


def readers_of(picture: ClusterPicture, owner: PeerView, target: AgentInfo) -> list[Reader]:
    isolated = _effective(target.read_policy, target.policy_group) == "isolated"
    found = [
        Reader(
            agent_id=target.id,
            node_id=owner.node_id,
            read_policy=target.read_policy,
            policy_group=target.policy_group,
            scope="own",
            why="itself (every memory but archived ones)",
        )
    ]
    for node in picture.peers:
        same = node.node_id == owner.node_id
        if not same and isolated:
            continue  # an isolated agent's memories never leave its node
        for agent in node.agents:
            if agent.id == target.id or not _answered_here(picture, node, agent):
                continue
            policy = _effective(agent.read_policy, agent.policy_group)
            where = "on the owner's daemon" if same else "across nodes"
            if policy == "shared":
                why = f"shared reader {where}"
            elif policy == "group" and agent.policy_group == target.policy_group:
                why = f"member of group {agent.policy_group} {where}"
            else:
                continue
            found.append(
                Reader(
                    agent_id=agent.id,
                    node_id=node.node_id,
                    read_policy=agent.read_policy,
                    policy_group=agent.policy_group,
                    scope="global",
                    why=why,
                )
            )
    return found


def sources_of(picture: ClusterPicture, owner: PeerView, reader: AgentInfo) -> list[Source]:
    policy = _effective(reader.read_policy, reader.policy_group)
    sources = []
    for node in picture.peers:
        same = node.node_id == owner.node_id
        if not same and policy == "isolated":
            continue
        theirs = []
        for agent in node.agents:
            if agent.id == reader.id or not _answered_here(picture, node, agent):
                continue
            if not same and _effective(agent.read_policy, agent.policy_group) == "isolated":
                continue  # stays home
            if policy == "shared" or (
                policy == "group" and agent.policy_group == reader.policy_group
            ):
                theirs.append(agent.id)
        healthy, _ = _health(node)
        if same:
            sources.append(
                Source(
                    node_id=node.node_id,
                    state=node.state,
                    healthy=healthy,
                    scope="own",
                    agents=(reader.id,),
                )
            )
        if theirs:
            sources.append(
                Source(
                    node_id=node.node_id,
                    state=node.state,
                    healthy=healthy,
                    scope="global",
                    agents=tuple(sorted(theirs)),
                )
            )
    return sources


def explain(picture: ClusterPicture, agent_id: str) -> Explanation:
    table_age = picture.table_age_s
    stale_note = (
        [
            f"the routing table is {table_age:.1f}s old (no coordinator answers): what is shown may be out of date"
        ]
        if picture.stale and table_age is not None
        else []
    )
    if agent_id == LOCAL_AGENT:
        return Explanation(
            agent_id=agent_id,
            known=True,
            read_policy="shared",
            notes=(
                "`default` exists on every daemon and is node-local: it is never routed and "
                "never a collision; each node's `default` reads that node's daemon (shared), "
                "plus what other nodes share with shared readers",
            ),
            misses=tuple(stale_note),
            table_age_s=table_age,
        )
    owner_id = picture.owner_of(agent_id)
    owner = picture.peer(owner_id) if owner_id else None
    target = (
        next((a for a in owner.agents if a.id == agent_id), None) if owner is not None else None
    )
    if owner is None or target is None:
        return Explanation(
            agent_id=agent_id,
            known=False,
            misses=(
                f"no node in the cluster reports an agent {agent_id!r}: a request for it is "
                "served by the daemon of whichever sidecar receives it, which reads an unknown "
                "agent as isolated with no memories (and a write registers it there as shared)",
                *stale_note,
            ),
            table_age_s=table_age,
        )

    route = next((r for r in picture.routes if r.agent_id == agent_id), None)
    collision = next((c for c in picture.collisions if c.agent_id == agent_id), None)
    readers = readers_of(picture, owner, target)
    sources = sources_of(picture, owner, target)
    misses: list[str] = []
    notes: list[str] = []

    healthy, problem = _health(owner)
    if not healthy:
        misses.append(
            f"{problem}: reads of {agent_id} get nothing from its owner (partial results, "
            f"{agent_id} listed as missing) and writes for it cannot reach its daemon"
        )
    if collision is not None:
        others = [n for n in collision.claimants if n != collision.winner]
        misses.append(
            f"{agent_id} is also claimed by {', '.join(others)}: only {collision.winner} "
            f"answers for it (rule {collision.rule}); memories held under {agent_id} on "
            f"{', '.join(others)} are not read through the cluster. "
            f"Settle it with `signet-cluster adopt {agent_id} NODE`"
        )
    for source in sources:
        if source.node_id == owner.node_id or source.healthy:
            continue
        node = picture.peer(source.node_id)
        assert node is not None
        _, why = _health(node)
        misses.append(
            f"{why}: the global memories of {', '.join(source.agents)} are missing from "
            f"{agent_id}'s reads"
        )
    misses.extend(stale_note)

    policy = _effective(target.read_policy, target.policy_group)
    if target.read_policy == "group" and target.policy_group is None:
        notes.append(f"{agent_id} has policy group but no group: the daemon treats it as isolated")
    if policy == "isolated":
        notes.append(
            f"{agent_id} is isolated: it reads only its own memories, and none of its memories "
            f"leave {owner.node_id} (shared agents on {owner.node_id} still see its global ones, "
            "as the daemon does)"
        )
    notes.append(
        f"private memories of {agent_id} are read by {agent_id} alone and never leave "
        f"{owner.node_id}; archived ones are not recalled"
    )
    return Explanation(
        agent_id=agent_id,
        known=True,
        owner=owner.node_id,
        owner_url=owner.url,
        owner_state=owner.state,
        owner_daemon=owner.daemon,
        last_heartbeat_age_s=owner.last_seen_age_s,
        read_policy=target.read_policy,
        policy_group=target.policy_group,
        route=route,
        collision=collision,
        readers=tuple(readers),
        reads=tuple(sources),
        misses=tuple(misses),
        notes=tuple(notes),
        table_age_s=table_age,
    )


def cluster_problems(status: Mapping[str, Any]) -> list[str]:
    """Everything that makes the cluster degraded, one line each (empty when healthy):
    `status` exits 3 on any, the /cluster page lists them."""
    problems = []
    for node in status.get("nodes", []):
        if node.get("state") != "alive":
            problems.append(f"node {node['node_id']} is {node.get('state')}")
        elif not (node.get("daemon") or {}).get("healthy"):
            error = (node.get("daemon") or {}).get("error")
            problems.append(
                f"daemon on {node['node_id']} is unhealthy" + (f": {error}" if error else "")
            )
    view = status.get("view") or {}
    etcd = status.get("etcd")
    if isinstance(etcd, Mapping) and not etcd.get("ok"):
        problems.append(f"etcd does not answer ({etcd.get('error')}): routing from the last view")
    elif view.get("stale"):
        problems.append(f"routing table is {view.get('age_s')}s old: no coordinator answers")
    for collision in status.get("collisions", []):
        problems.append(
            f"agent {collision['agent_id']} is claimed by {', '.join(collision['claimants'])}; "
            f"owner {collision['winner']} ({collision['rule']})"
        )
    return problems
