"""Where a request for an agent is served: this node's daemon, the owner's sidecar (one hop),
or nowhere right now because the owner is down.

The cluster view is the coordinator's registry on a coordinator and the latest registry copy
on a member. `default` is never routed; an agent nobody in the cluster claims is served by
the local daemon (which treats it as an unregistered agent, as it would without a cluster).
An agent whose owner is known but down is *unreachable*: it is never sent to another daemon.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
from aiohttp import web

from sidecar import keys
from sidecar.membership.coordinator import full_reply, local_view
from sidecar.membership.view import ClusterView
from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT
from signet_cluster.protocol import AgentInfo, PeerView

TargetKind = Literal["local", "remote", "unreachable"]


@attrs.frozen(kw_only=True)
class Target:
    """The routing decision for one agent."""

    kind: TargetKind
    agent_id: str
    node_id: str  # the owner (this node for local)
    url: str
    read_policy: str
    policy_group: str | None
    reason: str  # "default agent", "local agent", "unknown agent", "owned by b", ...
    owner_state: str = "alive"


def current_view(app: web.Application) -> ClusterView | None:
    """The registry this sidecar routes by (None while standalone)."""
    if app[keys.IDENTITY].coordinator:
        return local_view(app)
    return app[keys.MEMBERSHIP].latest()


def owner_peer(view: ClusterView, agent_id: str) -> PeerView | None:
    """The single owner of `agent_id` by the coordinators' rule, alive or not."""
    route = view.route(agent_id)
    if route is not None:
        return view.peer(route.node_id)
    for collision in view.collisions:
        if collision.agent_id == agent_id:
            return view.peer(collision.winner)
    claimants = [p for p in view.peers if any(a.id == agent_id for a in p.agents)]
    return claimants[0] if len(claimants) == 1 else None


def agent_info(peer: PeerView | None, agent_id: str) -> AgentInfo | None:
    if peer is None:
        return None
    return next((a for a in peer.agents if a.id == agent_id), None)


def _policy(agent: AgentInfo | None) -> tuple[str, str | None]:
    # A daemon reads an agent it has no row for as isolated.
    if agent is None:
        return "isolated", None
    return agent.read_policy, agent.policy_group


def decide(app: web.Application, agent_id: str, view: ClusterView | None = None) -> Target:
    identity = app[keys.IDENTITY]
    snapshot = app[keys.WATCHER].snapshot
    local = snapshot.agent(agent_id)

    def here(reason: str) -> Target:
        policy, group = _policy(local)
        return Target(
            kind="local",
            agent_id=agent_id,
            node_id=identity.node_id,
            url=identity.url,
            read_policy=policy,
            policy_group=group,
            reason=reason,
        )

    if agent_id == DEFAULT_AGENT:
        return here("default agent")
    view = view if view is not None else current_view(app)
    if view is None:
        return here("local agent" if local is not None else "unknown agent")
    peer = owner_peer(view, agent_id)
    if peer is None or peer.node_id == identity.node_id:
        if peer is None and local is None:
            return here("unknown agent")
        return here("local agent")
    policy, group = _policy(agent_info(peer, agent_id))
    route = view.route(agent_id)
    alive = route is not None and route.node_id == peer.node_id
    return Target(
        kind="remote" if alive else "unreachable",
        agent_id=agent_id,
        node_id=peer.node_id,
        url=route.url if route is not None and alive else peer.url,
        read_policy=policy,
        policy_group=group,
        reason=f"owned by {peer.node_id}" + ("" if alive else f" ({peer.state})"),
        owner_state="alive" if alive else peer.state,
    )


class RouteCache:
    """`decide` per agent, kept while what it was decided from is unchanged: the registry
    version this node routes by (its own on a coordinator, the newest copy and the failsafe
    probes on a member), the daemon's latest reading (a new snapshot object per probe) and
    the node's identity. A busy sidecar decides once per agent and registry version instead
    of once per request."""

    LIMIT = 10_000  # distinct agents kept; past it decisions are simply not cached

    def __init__(self) -> None:
        self.key: tuple[object, ...] = ()
        self.targets: dict[str, Target] = {}

    def target(self, app: web.Application, agent_id: str) -> Target:
        identity = app[keys.IDENTITY]
        key = (
            identity.node_id,
            identity.url,
            identity.coordinator,
            app[keys.WATCHER].snapshot,
            _view_key(app),
        )
        if len(key) != len(self.key) or any(
            a is not b and a != b for a, b in zip(key, self.key, strict=True)
        ):
            self.targets = {}
        # Kept even when only equal: the next request then compares by identity.
        self.key = key
        found = self.targets.get(agent_id)
        if found is None:
            found = decide(app, agent_id)
            if len(self.targets) < self.LIMIT:
                self.targets[agent_id] = found
        return found


def _view_key(app: web.Application) -> tuple[object, ...]:
    """What identifies the registry `current_view` would return now."""
    identity = app[keys.IDENTITY]
    if identity.coordinator:
        return ("coordinator", full_reply(app, identity.protocol.max).registry)
    membership = app[keys.MEMBERSHIP]
    view = membership.newest_view()
    if view is None:
        return ("standalone",)
    return (view.coordinator_id, view.registry, view.warming, tuple(membership.direct.items()))


def owns(app: web.Application, agent_id: str) -> bool:
    """Whether this node's daemon is the owner (a hop request is only served then)."""
    if agent_id == DEFAULT_AGENT:
        return True
    target = decide(app, agent_id)
    return target.kind == "local" and app[keys.WATCHER].snapshot.agent(agent_id) is not None


def retry_after(app: web.Application) -> str:
    """Seconds until the registry can have seen a returning owner again (one TTL)."""
    return str(max(1, math.ceil(app[keys.SETTINGS].ttl)))
