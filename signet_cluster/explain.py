"""`explain AGENT`: where an agent lives, who can read its memories, what it reads, and why
a read would miss. Pure: it works on a `ClusterPicture` (the status document any sidecar
serves) and does no I/O.

The read rules are the daemon's (contract §2) inside one daemon, and DESIGN §7 across nodes:

- an agent reads all its own memories except archived ones, on its owner;
- on the owner's daemon, a `shared` agent reads every agent's `global` memories and a
  `group` G agent reads the `global` memories of agents whose `policy_group` is G, whatever
  their own policy (so an isolated agent's global memories are still seen by the shared
  agents of its own node);
- across nodes, a `shared` or `group` reader's read fans out, and every other node
  contributes the `global` memories of its agents that the daemon does not read as isolated
  (to a group G reader only those of `group` G agents): the contributing sidecar's own rule
  (`visibility.may_contribute`), called here;
- private and archived memories never leave their node; `default` is node-local.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from signet_cluster.converter import structure
from signet_cluster.daemon.ownership import MemoryOwner
from signet_cluster.daemon.visibility import may_contribute
from signet_cluster.protocol import AgentInfo, Collision, DaemonInfo, PeerView, RouteEntry

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


def _daemon_reads(reader: AgentInfo, other: AgentInfo) -> bool:
    """On one daemon: whether `reader` sees `other`'s global memories (contract §2)."""
    policy = _effective(reader.read_policy, reader.policy_group)
    return policy == "shared" or (policy == "group" and other.policy_group == reader.policy_group)


def _travels(memory_of: AgentInfo, reader: AgentInfo) -> bool:
    """Across nodes: whether a node contributes `memory_of`'s global memories to `reader`'s
    federated read. The contributing sidecar's own rule, not a copy of it, applied to the
    policy the daemon really uses (its `agents` row: `group` without a group is isolated)."""
    policy = _effective(memory_of.read_policy, memory_of.policy_group)
    as_daemon_reads = attrs.evolve(
        memory_of,
        read_policy=policy,
        policy_group=memory_of.policy_group if policy == "group" else None,
    )
    owner = MemoryOwner(id="", agent_id=memory_of.id, visibility="global", is_deleted=False)
    return may_contribute(
        owner, {memory_of.id: as_daemon_reads}, reader.read_policy, reader.policy_group
    )


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


def _reader_why(reader: AgentInfo, where: str) -> str:
    if _effective(reader.read_policy, reader.policy_group) == "shared":
        return f"shared reader {where}"
    return f"member of group {reader.policy_group} {where}"


def readers_of(picture: ClusterPicture, owner: PeerView, target: AgentInfo) -> list[Reader]:
    """Who reads `target`'s memories: itself, on its owner's daemon whoever the daemon lets,
    and on other nodes the agents whose federated reads the owner contributes to."""
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
        for agent in node.agents:
            # A reader is where its own requests are answered (its owner, or any node for
            # `default`); a losing copy of an agent reads nothing as that agent.
            if agent.id == target.id or not _answered_here(picture, node, agent):
                continue
            if not (_daemon_reads(agent, target) if same else _travels(target, agent)):
                continue
            where = "on the owner's daemon" if same else "across nodes"
            found.append(
                Reader(
                    agent_id=agent.id,
                    node_id=node.node_id,
                    read_policy=agent.read_policy,
                    policy_group=agent.policy_group,
                    scope="global",
                    why=_reader_why(agent, where),
                )
            )
    return found


def sources_of(picture: ClusterPicture, owner: PeerView, reader: AgentInfo) -> list[Source]:
    """What `reader` reads, node by node: everything of its own and, by the daemon's rules,
    other agents' global memories on its owner's daemon; elsewhere what those nodes
    contribute to its federated reads (every agent their daemon holds, owned here or not,
    as the contributing sidecar filters by its own roster)."""
    sources = []
    for node in picture.peers:
        same = node.node_id == owner.node_id
        healthy, _ = _health(node)

        def source(
            scope: str, agents: list[str], node: PeerView = node, ok: bool = healthy
        ) -> Source:
            return Source(
                node_id=node.node_id,
                state=node.state,
                healthy=ok,
                scope=scope,
                agents=tuple(agents),
            )

        if same:
            sources.append(source("own", [reader.id]))
            theirs = [a.id for a in node.agents if a.id != reader.id and _daemon_reads(reader, a)]
        else:
            theirs = [a.id for a in node.agents if _travels(a, reader)]
        if theirs:
            sources.append(source("global", sorted(theirs)))
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
            f"{agent_id} listed as missing); remembers for it are spooled (202) and written "
            "once the owner is back, other writes get 503"
        )
    if collision is not None:
        others = ", ".join(n for n in collision.claimants if n != collision.winner)
        misses.append(
            f"{agent_id} is also claimed by {others}: only {collision.winner} answers for it "
            f"(rule {collision.rule}); what {agent_id} stored on {others} is read at most as "
            "federated global memories, never its private ones. "
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

    if target.read_policy == "isolated":
        notes.append(f"{agent_id} is isolated: it reads only its own memories")
    elif _effective(target.read_policy, target.policy_group) == "isolated":
        notes.append(
            f"{agent_id} has policy group but no group: the daemon reads it as isolated, so "
            "it reads only its own memories"
        )
    if not _travels(target, AgentInfo(id="a-shared-reader", read_policy="shared")):
        notes.append(
            f"none of {agent_id}'s memories leave {owner.node_id} (shared agents on "
            f"{owner.node_id} still see its global ones, as the daemon does)"
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


def _agent_ids(node: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(a["id"] for a in node.get("agents") or () if a.get("id") != "default")


def replacement_candidates(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(old, new) pairs: a node that is not alive, and an alive node with another id at its
    URL hosting the same agents — most likely the same host restarted under a new node id."""
    nodes = list(status.get("nodes", []))
    pairs = []
    for old in nodes:
        if old.get("state") == "alive" or not _agent_ids(old):
            continue
        for new in nodes:
            if (
                new.get("state") == "alive"
                and new["node_id"] != old["node_id"]
                and new.get("url") == old.get("url")
                and _agent_ids(new) == _agent_ids(old)
            ):
                pairs.append((old["node_id"], new["node_id"]))
                break
    return pairs


def cluster_problems(status: Mapping[str, Any]) -> list[str]:
    """Everything that makes the cluster degraded, one line each (empty when healthy):
    `status` exits 3 on any, the /cluster page lists them."""
    problems = []
    replaced = {old: new for old, new in replacement_candidates(status)}
    for node in status.get("nodes", []):
        if node["node_id"] in replaced:
            new = replaced[node["node_id"]]
            problems.append(
                f"node {node['node_id']} is {node.get('state')} and node {new} now answers at "
                f"its URL {node.get('url')} with the same agents: a restart under a new id? "
                f"`signet-cluster replace {node['node_id']} {new}` carries its membership "
                "and adoptions over"
            )
        elif node.get("state") != "alive":
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
    for refusal in status.get("refused_heartbeats") or []:
        problems.append(
            f"heartbeats from {refusal['sender']} refused ({refusal['reason']}) "
            f"{refusal['count']} time(s), last {refusal['last_age_s']}s ago: {refusal['error']}"
        )
    for collision in status.get("collisions", []):
        problems.append(
            f"agent {collision['agent_id']} is claimed by {', '.join(collision['claimants'])}; "
            f"owner {collision['winner']} ({collision['rule']})"
        )
    federation = status.get("federation")
    if isinstance(federation, Mapping):
        for node_id, health in sorted((federation.get("nodes") or {}).items()):
            if isinstance(health, Mapping) and health.get("breaker", "closed") != "closed":
                problems.append(
                    f"federated reads through {federation.get('as_seen_by')} skip {node_id}: "
                    f"circuit breaker {health['breaker']} (last error: {health.get('last_error')})"
                )
    problems.extend(_local_exhaustion(status))
    return problems


def _local_exhaustion(status: Mapping[str, Any]) -> list[str]:
    """What the answering sidecar has run out of: connections, the spool's disk, a spool
    file found damaged."""
    local = status.get("local") or {}
    node = status.get("node_id") or "this sidecar"
    found = []
    connections = local.get("connections") or {}
    if connections.get("exhausted"):
        found.append(f"{node}: {connections['exhausted']}")
    spool = local.get("spool") or {}
    if spool.get("disk_full"):
        found.append(f"{node}: {spool['disk_full']} (new spooled writes get 503)")
    damaged = spool.get("damaged") or {}
    if damaged:
        found.append(
            f"{node}: the spool file was damaged and moved aside; {damaged.get('unrecovered')} "
            f"acknowledged writes could not be recovered (report: {damaged.get('report')})"
        )
    return found
