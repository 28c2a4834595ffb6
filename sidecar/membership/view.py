"""A member's view of the cluster: which coordinators to heartbeat to, how each one answered,
and the latest registry copy (peers, routing table) received from them."""

from __future__ import annotations

import attrs

from signet_cluster.clock import Clock
from signet_cluster.protocol import Collision, HeartbeatReply, PeerView, RouteEntry
from signet_cluster.registry import RULE_ADOPTED, compute_routing
from signet_cluster.state import StateStore


@attrs.define(kw_only=True)
class CoordinatorContact:
    url: str
    first_attempt: float | None = None
    last_ok: float | None = None
    last_attempt: float | None = None
    error: str | None = None
    failures: int = 0
    removed: bool = False
    # It answered that it is no coordinator (421): demoted, so forgotten at once if learned.
    not_coordinator: bool = False
    protocol: int | None = None

    def summary(self, now: float) -> dict[str, object]:
        return {
            "url": self.url,
            "ok": self.error is None and self.last_ok is not None,
            "last_ok_age_s": round(now - self.last_ok, 3) if self.last_ok is not None else None,
            "failures": self.failures,
            "error": self.error,
            "removed": self.removed,
            "protocol": self.protocol,
        }


@attrs.frozen(kw_only=True)
class ClusterView:
    """One coordinator's registry as last received (or the local registry on a coordinator)."""

    source: str
    coordinator_id: str
    registry: str
    peers: tuple[PeerView, ...]
    routes: tuple[RouteEntry, ...]
    collisions: tuple[Collision, ...]
    coordinators: tuple[str, ...]
    received_at: float
    # Sent by a coordinator that is still rebuilding its registry (HeartbeatReply.warming).
    warming: bool = False

    @classmethod
    def from_reply(cls, source: str, reply: HeartbeatReply, now: float) -> ClusterView:
        return cls(
            source=source,
            coordinator_id=reply.coordinator_id,
            registry=reply.registry,
            peers=reply.peers,
            routes=reply.routes,
            collisions=reply.collisions,
            coordinators=reply.coordinators,
            received_at=now,
            warming=reply.warming,
        )

    def route(self, agent_id: str) -> RouteEntry | None:
        for entry in self.routes:
            if entry.agent_id == agent_id:
                return entry
        return None

    def peer(self, node_id: str) -> PeerView | None:
        for peer in self.peers:
            if peer.node_id == node_id:
                return peer
        return None


class Membership:
    def __init__(
        self,
        *,
        self_url: str,
        configured: tuple[str, ...],
        state: StateStore,
        clock: Clock,
        ttl: float = 5.0,
    ) -> None:
        self.self_url = self_url.rstrip("/")
        self.configured = tuple(u.rstrip("/") for u in configured)
        self.state = state
        self.clock = clock
        self.ttl = ttl
        self.persisted: list[str] = []
        self.contacts: dict[str, CoordinatorContact] = {}
        # The copy of each coordinator's registry this node routes by, and (while that
        # coordinator warms up after a restart) the newer copy it sent meanwhile.
        self.views: dict[str, ClusterView] = {}
        self.warming: dict[str, ClusterView] = {}
        # Failsafe: node id -> alive, from this sidecar's own probes while no coordinator
        # answers (sidecar.membership.failsafe). Empty whenever a coordinator is reachable.
        self.direct: dict[str, bool] = {}
        # Who removed this node from the cluster (a coordinator URL), kept in the state DB
        # until `join` adds it back: a removed node is not ready (/readyz) and says why.
        self.removed_by: str | None = None

    async def load(self) -> None:
        self.persisted = await self.state.coordinators()
        self.removed_by = await self.state.meta("removed_by") or None

    async def mark_removed(self, by: str) -> bool:
        """Record that a coordinator removed this node; True when that is news."""
        if self.removed_by == by:
            return False
        self.removed_by = by
        await self.state.set_meta("removed_by", by)
        return True

    def targets(self) -> list[str]:
        urls = dict.fromkeys([*self.configured, *self.persisted])
        return [u for u in urls if not self.contacts.get(u, CoordinatorContact(url=u)).removed]

    def told_to_stop(self) -> list[str]:
        """Configured coordinators this node stopped heartbeating to because a coordinator
        said so (`remove`, or a 410): shown in status and /readyz until `join` re-adds it."""
        return [u for u in self.configured if u != self.self_url and self.contact(u).removed]

    def contact(self, url: str) -> CoordinatorContact:
        return self.contacts.setdefault(url, CoordinatorContact(url=url))

    async def add(self, urls: tuple[str, ...], *, rejoin: bool = False) -> list[str]:
        """Heartbeat to these coordinators too; `rejoin` (a join addressed to this node)
        also clears the removal mark."""
        clean = tuple(u.rstrip("/") for u in urls)
        for url in clean:
            self.contact(url).removed = False
        if rejoin and self.removed_by is not None:
            self.removed_by = None
            await self.state.set_meta("removed_by", "")
        if not set(clean) <= set(self.persisted):
            self.persisted = await self.state.update_coordinators(clean, ())
        return self.targets()

    async def remove(self, urls: tuple[str, ...]) -> list[str]:
        clean = tuple(u.rstrip("/") for u in urls)
        self.persisted = await self.state.update_coordinators((), clean)
        for url in clean:
            self.views.pop(url, None)
            self.warming.pop(url, None)
            if url in self.configured:
                # A configured coordinator cannot be unconfigured at run time; stop using it.
                self.contact(url).removed = True
        return self.targets()

    def record_attempt(self, url: str) -> None:
        contact = self.contact(url)
        contact.last_attempt = self.clock.monotonic()
        if contact.first_attempt is None:
            contact.first_attempt = contact.last_attempt

    def record_reply(self, url: str, reply: HeartbeatReply) -> None:
        now = self.clock.monotonic()
        contact = self.contact(url)
        contact.last_ok, contact.error, contact.failures = now, None, 0
        contact.not_coordinator = False
        contact.protocol = reply.protocol
        previous = self.views.get(url)
        held = self.warming.get(url) or previous  # the newest copy it sent
        if reply.unchanged and held is not None and held.registry == reply.registry:
            current = attrs.evolve(held, received_at=now, warming=reply.warming)
        else:
            current = ClusterView.from_reply(url, reply, now)
        if current.warming and previous is not None and not previous.warming:
            # A restarted coordinator has not heard from every node yet: an agent missing
            # from its copy would be routed locally (a write on the wrong daemon). Keep
            # routing by the copy it sent before until it has rebuilt its registry.
            self.warming[url] = current
            self.views[url] = attrs.evolve(previous, received_at=now)
        else:
            self.warming.pop(url, None)
            self.views[url] = current

    def record_failure(self, url: str, error: str) -> None:
        contact = self.contact(url)
        contact.error = error
        contact.failures += 1

    def known_registry(self, url: str) -> str | None:
        view = self.warming.get(url) or self.views.get(url)
        return view.registry if view is not None else None

    def stale_coordinators(self, after: float) -> list[str]:
        """Learned (not configured) coordinators that no current view lists and that have
        not answered for `after` seconds (decommissioned, or removed from the cluster), or
        that answered they are no coordinator (demoted)."""
        now = self.clock.monotonic()
        listed = self.learned_coordinators()
        stale = []
        for url in self.persisted:
            if url in self.configured or url in listed or url == self.self_url:
                continue
            contact = self.contacts.get(url)
            if contact is None or contact.error is None:
                continue
            if contact.not_coordinator:
                stale.append(url)
                continue
            since = contact.last_ok if contact.last_ok is not None else contact.first_attempt
            if since is not None and now - since > after:
                stale.append(url)
        return stale

    def learned_coordinators(self) -> set[str]:
        learned: set[str] = set()
        for view in self.views.values():
            learned.update(u.rstrip("/") for u in view.coordinators)
        return learned

    def newest_view(self) -> ClusterView | None:
        """The most recently received registry copy, as received; a copy from a
        coordinator still warming up (e.g. just promoted) only when there is no other."""
        settled = [v for v in self.views.values() if not v.warming]
        candidates = settled or list(self.views.values())
        if not candidates:
            return None
        return max(candidates, key=lambda v: v.received_at)

    def in_failsafe(self) -> bool:
        """True when this member has coordinators but none answered within a TTL."""
        targets = [u for u in self.targets() if u != self.self_url]
        if not targets or self.newest_view() is None:
            return False
        now = self.clock.monotonic()
        return not any(
            (c := self.contacts.get(u)) is not None
            and c.last_ok is not None
            and now - c.last_ok <= self.ttl
            for u in targets
        )

    def latest(self) -> ClusterView | None:
        """The view to route with: the newest copy, corrected by direct peer checks while
        no coordinator answers (failsafe)."""
        view = self.newest_view()
        if view is None or not self.direct:
            return view
        return failsafe_view(view, self.direct)


def failsafe_view(view: ClusterView, direct: dict[str, bool]) -> ClusterView:
    """`view` with each probed peer's state replaced by what the probe saw, and the routing
    table recomputed by the same rule the coordinators use (adoptions kept)."""
    peers = tuple(
        attrs.evolve(p, state="alive" if direct[p.node_id] else "down")
        if p.node_id in direct
        else p
        for p in view.peers
    )
    adoptions = {c.agent_id: c.winner for c in view.collisions if c.rule == RULE_ADOPTED}
    # The coordinators' first claims are not in the reply; each collision names its owner.
    first = {c.agent_id: {c.winner: 0.0} for c in view.collisions if c.rule != RULE_ADOPTED}
    routes, collisions = compute_routing(peers, adoptions, first)
    return attrs.evolve(view, peers=peers, routes=routes, collisions=collisions)
