"""Cluster protocol messages: frozen value objects exchanged between sidecars.

Every message is structured and unstructured by the one converter in `converter.py`.
Peers tolerate unknown keys so a newer sidecar can add fields without breaking older ones;
`PROTOCOL_MIN..PROTOCOL_MAX` is the range of wire versions this build speaks.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

PROTOCOL_MIN = 1
PROTOCOL_MAX = 1

READ_POLICIES = ("isolated", "shared", "group")
FLAVORS = ("ts", "ts-legacy", "rust", "unknown")
PEER_STATES = ("alive", "down")

MAX_AGENTS_PER_NODE = 1000
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_AGENT_ID = re.compile(r"^[^\s:/?#]{1,128}$")


def valid_node_id(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not _NODE_ID.match(value):
        raise ValueError(
            f"{attr.name} must be 1-64 characters of letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {value!r}"
        )


def valid_agent_id(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not _AGENT_ID.match(value):
        raise ValueError(
            f"{attr.name} must be 1-128 characters without spaces, ':', '/', '?' or '#'"
        )


def valid_http_url(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not re.match(r"^https?://[^\s/]+(:\d+)?/?$", value):
        raise ValueError(f"{attr.name} must be an http(s)://host:port URL, got {value!r}")


def _unique_agents(_inst: object, _attr: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    seen: set[str] = set()
    for agent in value:
        if agent.id in seen:
            raise ValueError(f"agent {agent.id!r} is listed twice")
        seen.add(agent.id)


def valid_http_urls(inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for url in value:
        valid_http_url(inst, attr, url)


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must not be negative")


@attrs.frozen(kw_only=True)
class ProtocolRange:
    min: int = attrs.field(validator=attrs.validators.ge(1))
    max: int = attrs.field(validator=attrs.validators.ge(1))

    @max.validator
    def _ordered(self, _attr: attrs.Attribute[int], value: int) -> None:
        if value < self.min:
            raise ValueError("protocol.max must be >= protocol.min")

    @classmethod
    def ours(cls) -> ProtocolRange:
        return cls(min=PROTOCOL_MIN, max=PROTOCOL_MAX)

    def negotiate(self, other: ProtocolRange) -> int | None:
        """The highest version both ranges contain, or None."""
        best = min(self.max, other.max)
        return best if best >= max(self.min, other.min) else None


@attrs.frozen(kw_only=True)
class AgentInfo:
    """One agent as its owning daemon reports it."""

    id: str = attrs.field(validator=valid_agent_id)
    read_policy: str = attrs.field(validator=attrs.validators.in_(READ_POLICIES))
    policy_group: str | None = None
    created_at: str | None = None


@attrs.frozen(kw_only=True)
class DaemonInfo:
    """What a sidecar knows about the Signet daemon beside it."""

    flavor: str = attrs.field(validator=attrs.validators.in_(FLAVORS))
    version: str | None = None
    healthy: bool = False
    error: str | None = None


@attrs.frozen(kw_only=True)
class SpoolSummary:
    """Writes a sidecar holds for unreachable owners. `oldest_at` is a wall-clock time (not
    an age) so an unchanged spool does not change the heartbeat every second."""

    depth: int = attrs.field(validator=attrs.validators.ge(0))
    bytes: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    oldest_at: float | None = None
    dead_letters: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    # The owner node ids the waiting writes are for (older sidecars do not send it).
    owners: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Heartbeat:
    """Sent by every sidecar to every coordinator once per heartbeat interval."""

    protocol: ProtocolRange
    node_id: str = attrs.field(validator=valid_node_id)
    instance_id: str = attrs.field(validator=attrs.validators.max_len(128))
    url: str = attrs.field(validator=valid_http_url)
    sidecar_version: str = attrs.field(validator=attrs.validators.max_len(64))
    daemon: DaemonInfo
    agents: tuple[AgentInfo, ...] = attrs.field(
        validator=[attrs.validators.max_len(MAX_AGENTS_PER_NODE), _unique_agents]
    )
    capabilities: tuple[str, ...] = ()
    seq: int = attrs.field(validator=_non_negative)
    sent_at: float = attrs.field(validator=_non_negative)
    coordinator: bool = False
    # "<coordinator instance>:<registry version>" of the last full reply this node holds, so
    # an unchanged registry is answered without re-sending the whole peer list.
    known_registry: str | None = None
    spool: SpoolSummary | None = None


@attrs.frozen(kw_only=True)
class PeerView:
    """A node as the registry sees it; the building block of status and heartbeat replies."""

    node_id: str
    url: str
    state: str
    joined: bool
    coordinator: bool
    protocol: int | None
    sidecar_version: str | None
    instance_id: str | None
    daemon: DaemonInfo
    agents: tuple[AgentInfo, ...]
    last_seen_age_s: float | None
    seq: int | None = None
    spool: SpoolSummary | None = None

    @property
    def alive(self) -> bool:
        return self.state == "alive"


@attrs.frozen(kw_only=True)
class RouteEntry:
    """agent -> owning node, for routable (alive) owners only."""

    agent_id: str
    node_id: str
    url: str
    read_policy: str
    policy_group: str | None = None


@attrs.frozen(kw_only=True)
class Collision:
    """Several nodes claim the same agent; `winner` is the single owner every coordinator picks."""

    agent_id: str
    winner: str
    claimants: tuple[str, ...]
    rule: str


@attrs.frozen(kw_only=True)
class HeartbeatReply:
    """The coordinator's answer. When `unchanged` is true the node's copy of the registry
    (named by `registry`) is current and peers/routes/collisions are left empty. `warming`:
    the coordinator started (or was promoted) less than a TTL ago, so its registry may
    still miss nodes that have not heartbeated to it yet."""

    protocol: int
    coordinator_id: str
    registry: str
    ttl_s: float
    unchanged: bool = False
    peers: tuple[PeerView, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    coordinators: tuple[str, ...] = ()
    collisions: tuple[Collision, ...] = ()
    warming: bool = False


@attrs.frozen(kw_only=True)
class JoinRequest:
    """`signet-cluster join HOST:PORT`: the coordinator probes and records the peer."""

    address: str = attrs.field(validator=attrs.validators.max_len(300))


@attrs.frozen(kw_only=True)
class AdoptRequest:
    """`signet-cluster adopt AGENT NODE` (node None clears the override)."""

    agent_id: str = attrs.field(validator=valid_agent_id)
    node_id: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(valid_node_id)
    )


@attrs.frozen(kw_only=True)
class ReplaceRequest:
    """`signet-cluster replace OLD NEW`: NEW takes over OLD's membership and adoptions."""

    old: str = attrs.field(validator=valid_node_id)
    new: str = attrs.field(validator=valid_node_id)
    dry_run: bool = False


@attrs.frozen(kw_only=True)
class PromoteRequest:
    coordinator: bool


@attrs.frozen(kw_only=True)
class CoordinatorsUpdate:
    """Tells a sidecar which coordinators to heartbeat to (sent by a coordinator on join and
    remove). `node_id` names the node the update is for: a sidecar with another id at that
    URL (a restart under a new id, a new host) refuses it instead of obeying."""

    add: tuple[str, ...] = attrs.field(default=(), validator=valid_http_urls)
    remove: tuple[str, ...] = attrs.field(default=(), validator=valid_http_urls)
    node_id: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(valid_node_id)
    )


@attrs.frozen(kw_only=True)
class NodeInfo:
    """`GET /api/cluster/info`: who answers at this address (used by join probes)."""

    node_id: str = attrs.field(validator=valid_node_id)
    url: str = attrs.field(validator=valid_http_url)
    sidecar_version: str
    protocol: ProtocolRange
    coordinator: bool
    daemon: DaemonInfo
