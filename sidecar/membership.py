"""A member's view of the cluster: which coordinators to heartbeat to, how each one answered,
and the latest registry copy (peers, routing table) received from them."""

from __future__ import annotations

import attrs

from signet_cluster.clock import Clock
from signet_cluster.protocol import Collision, HeartbeatReply, PeerView, RouteEntry
from signet_cluster.state import StateStore


@attrs.define(kw_only=True)
class CoordinatorContact:
    url: str
    last_ok: float | None = None
    last_attempt: float | None = None
    error: str | None = None
    failures: int = 0
    removed: bool = False
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
        self, *, self_url: str, configured: tuple[str, ...], state: StateStore, clock: Clock
    ) -> None:
        self.self_url = self_url.rstrip("/")
        self.configured = tuple(u.rstrip("/") for u in configured)
        self.state = state
        self.clock = clock
        self.persisted: list[str] = []
        self.contacts: dict[str, CoordinatorContact] = {}
        self.views: dict[str, ClusterView] = {}

    async def load(self) -> None:
        self.persisted = await self.state.coordinators()

    def targets(self) -> list[str]:
        urls = dict.fromkeys([*self.configured, *self.persisted])
        return [u for u in urls if not self.contacts.get(u, CoordinatorContact(url=u)).removed]

    def contact(self, url: str) -> CoordinatorContact:
        return self.contacts.setdefault(url, CoordinatorContact(url=url))

    async def add(self, urls: tuple[str, ...]) -> list[str]:
        clean = tuple(u.rstrip("/") for u in urls)
        for url in clean:
            self.contact(url).removed = False
        if not set(clean) <= set(self.persisted):
            self.persisted = await self.state.update_coordinators(clean, ())
        return self.targets()

    async def remove(self, urls: tuple[str, ...]) -> list[str]:
        clean = tuple(u.rstrip("/") for u in urls)
        self.persisted = await self.state.update_coordinators((), clean)
        for url in clean:
            self.views.pop(url, None)
            if url in self.configured:
                # A configured coordinator cannot be unconfigured at run time; stop using it.
                self.contact(url).removed = True
        return self.targets()

    def record_attempt(self, url: str) -> None:
        self.contact(url).last_attempt = self.clock.monotonic()

    def record_reply(self, url: str, reply: HeartbeatReply) -> None:
        now = self.clock.monotonic()
        contact = self.contact(url)
        contact.last_ok, contact.error, contact.failures = now, None, 0
        contact.protocol = reply.protocol
        previous = self.views.get(url)
        if reply.unchanged and previous is not None and previous.registry == reply.registry:
            self.views[url] = attrs.evolve(previous, received_at=now)
        else:
            self.views[url] = ClusterView.from_reply(url, reply, now)

    def record_failure(self, url: str, error: str) -> None:
        contact = self.contact(url)
        contact.error = error
        contact.failures += 1

    def known_registry(self, url: str) -> str | None:
        view = self.views.get(url)
        return view.registry if view is not None else None

    def learned_coordinators(self) -> set[str]:
        learned: set[str] = set()
        for view in self.views.values():
            learned.update(u.rstrip("/") for u in view.coordinators)
        return learned

    def latest(self) -> ClusterView | None:
        if not self.views:
            return None
        return max(self.views.values(), key=lambda v: v.received_at)
