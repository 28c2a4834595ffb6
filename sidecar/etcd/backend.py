"""The etcd registry backend (`registry_backend = "etcd"`): runs in every sidecar instead
of the coordinator heartbeat loop.

Each sidecar holds an etcd lease and renews it every heartbeat interval; its heartbeat sits
under that lease at `nodes/<id>`, so when the sidecar dies etcd deletes it within the lease
TTL and every other sidecar sees the node go down. Agents are claimed by compare-and-swap
(first claim wins, for everyone). A watch on the prefix keeps a local copy of every record,
from which each sidecar builds the same view a coordinator would send (peers, routes,
collisions) and stores it as `Membership.views["etcd"]`, so routing and `status` use it
unchanged. When etcd is unreachable the last view stays in use and its age is reported.
Key layout and routing rule: sidecar/etcd/view.py; remove/adopt: sidecar/etcd/admin.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import attrs
import structlog
from aiohttp import web

from sidecar import keys
from sidecar.etcd.view import (
    Entry,
    EtcdCache,
    Layout,
    MemberRecord,
    OwnerRecord,
    build_view,
    encode,
    owner_of,
)
from sidecar.membership.heartbeat import build_heartbeat
from sidecar.membership.view import ClusterView
from signet_cluster.etcd.client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    Lease,
    LeaseNotFound,
    Put,
    WatchCompacted,
)
from signet_cluster.protocol import Heartbeat
from signet_cluster.registry import LOCAL_AGENT
from signet_cluster.settings import Settings

log = structlog.get_logger("signet_cluster.etcd")
VIEW_NAME = "etcd"


def lease_ttl(settings: Settings) -> int:
    """etcd leases are whole seconds (and at least 2: etcd raises shorter ones anyway)."""
    return max(2, math.ceil(settings.ttl))


def renew_interval(settings: Settings) -> float:
    """Renew well inside the lease even with a slow heartbeat interval."""
    return min(settings.heartbeat_interval, lease_ttl(settings) / 3)


def call_timeout(settings: Settings) -> float:
    """How long one etcd call may wait on one member: `peer_timeout` (shared with heartbeats
    and admin calls, so possibly longer than the lease), but at most an equal share of what
    is left of the lease after a renewal interval. A renewal that has to get past silent
    members (a partition sends no reset) then still reaches a live one before it expires."""
    spare = lease_ttl(settings) - renew_interval(settings)
    return min(settings.peer_timeout, spare / max(1, len(settings.etcd_endpoints)))


def _same_content(heartbeat: Heartbeat) -> Heartbeat:
    # Sequence and send time change every round; only a real change is worth a write.
    return attrs.evolve(heartbeat, seq=0, sent_at=0.0, known_registry=None)


class EtcdBackend:
    def __init__(self, app: web.Application, client: EtcdClient) -> None:
        settings = app[keys.SETTINGS]
        self.app = app
        self.client = client
        self.layout = Layout(settings.etcd_prefix)
        self.node_id = app[keys.IDENTITY].node_id
        self.lease_ttl = lease_ttl(settings)
        self.interval = renew_interval(settings)
        self.clock = app[keys.CLOCK]
        self.cache = EtcdCache(self.layout)
        self.lease: Lease | None = None
        self.registered: Heartbeat | None = None
        self.registered_revision = 0
        self.synced = False
        self.last_ok: float | None = None
        self.error: str | None = None
        self.failures = 0
        self.watch_connected = False
        self.watch_error: str | None = None
        self.watch_next = 0
        self.watch_endpoint: str | None = None  # the member the live stream is open on
        self.claim_attempts: dict[str, int] = {}
        self.conflict: str | None = None  # another live sidecar registered our node id
        self.wake = asyncio.Event()
        self._watches: set[asyncio.Task[None]] = set()  # the live one, and cancelled ones
        self._built: int | None = None  # cache.changes the current view was built from
        self._alive: set[str] | None = None
        self._collisions: set[tuple[str, str]] = set()
        self._claimed_elsewhere: dict[str, str] = {}

    # -- the session loop ----------------------------------------------------------------
    async def run(self) -> None:
        watcher = self.app[keys.WATCHER]
        while True:
            watcher.changed.clear()
            self.wake.clear()
            try:
                await self.tick()
            except EtcdError as exc:
                self._failed(exc)
            except Exception:
                log.exception("etcd_round_failed")
            # A changed roster (or a lost watch) is handled at once, not at the next tick.
            waits = [asyncio.ensure_future(e.wait()) for e in (watcher.changed, self.wake)]
            try:
                await asyncio.wait(waits, timeout=self.interval, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def tick(self) -> None:
        if not self.synced:
            await self.resync()
        await self.ensure_lease()
        await self.register()
        if self.conflict is None:
            await self.claim()
        if self.error is not None:
            log.info("etcd_reachable", endpoint=self.client.endpoint, after_failures=self.failures)
        self.error, self.failures = None, 0
        self.last_ok = self.clock.monotonic()
        self.follow_calls()
        self.publish()

    def follow_calls(self) -> None:
        """Move the watch to the member the calls now use. Calls leave a member only when it
        failed them; a stream on that member may be just as dead yet silent (a partition
        sends no reset, and an idle watch has nothing to time out), so waiting on it could
        freeze the view forever. Reopening resumes from the last revision: nothing is lost."""
        if self.watch_connected and self.watch_endpoint not in (None, self.client.endpoint):
            log.warning(
                "etcd_watch_moved", failed=self.watch_endpoint, endpoint=self.client.endpoint
            )
            self.start_watch(self.watch_next)

    def _failed(self, exc: EtcdError) -> None:
        was_ok = self.error is None
        if self.error != exc.message:
            log.warning("etcd_failed", error=exc.message, code=exc.code)
        self.error = exc.message
        self.failures += 1
        if was_ok and self.synced:
            # A stream over a silently dead connection would hang: reopen it from the last
            # revision seen (nothing is lost), so a partition heals as soon as etcd answers.
            self.start_watch(self.watch_next)

    async def resync(self) -> None:
        """Read every record under the prefix, then follow changes from that revision."""
        result = await self.client.range(self.layout.prefix, prefix=True)
        self.cache.replace(result.kvs, result.revision)
        # Revisions noted before may belong to another history (an etcd started afresh
        # counts from 1 again): the copy just read is what to go by.
        self.claim_attempts.clear()
        self.registered_revision = 0
        self.synced = True
        self.start_watch(result.revision + 1)
        log.info("etcd_synced", revision=result.revision, keys=len(result.kvs))

    async def ensure_lease(self) -> None:
        if self.lease is not None:
            try:
                await self.client.lease_keepalive(self.lease.id)
                return
            except LeaseNotFound:
                # Expired while etcd was away, revoked behind our back, or etcd lost its
                # data (its revisions then start over, and the watch would wait for ones
                # far ahead): start over, from a fresh read.
                log.warning("etcd_lease_lost", lease=f"{self.lease.id:x}")
                self.lease, self.registered = None, None
                await self.resync()
        self.lease = await self.client.lease_grant(self.lease_ttl)
        log.info("etcd_lease_granted", lease=f"{self.lease.id:x}", ttl_s=self.lease.ttl)

    async def register(self) -> None:
        """Write members/<id> and the leased nodes/<id> when new or changed (or deleted by
        someone else); otherwise renewing the lease is all it takes to stay alive."""
        assert self.lease is not None
        heartbeat = build_heartbeat(self.app, None)
        content = _same_content(heartbeat)
        if self.cache.revision < self.registered_revision:
            return  # our last write has not come back through the watch yet
        node = self.cache.get("nodes", self.node_id)
        if self._held_by_another(node):
            return
        if self.registered == content:
            member = self.cache.get("members", self.node_id)
            if node is not None and node.kv.lease == self.lease.id and member is not None:
                return
        known = self.cache.members().get(self.node_id)
        first_seen = known.first_seen if known is not None else self.clock.time()
        record = MemberRecord(
            node_id=self.node_id, url=heartbeat.url, first_seen=first_seen, heartbeat=heartbeat
        )
        result = await self.client.txn(
            [],
            [
                Put(self.layout.member(self.node_id), encode(record)),
                Put(self.layout.node(self.node_id), encode(heartbeat), self.lease.id),
            ],
        )
        if self.registered is None:
            log.info("etcd_registered", node_id=self.node_id, revision=result.revision)
        self.registered, self.registered_revision = content, result.revision

    def _held_by_another(self, node: Entry | None) -> bool:
        """True while another sidecar instance holds nodes/<our id> under its own lease.
        Overwriting it would make two sidecars fight over one node id; waiting is safe (a
        crashed earlier instance of ours is gone once its lease expires)."""
        assert self.lease is not None
        other = node.record if node is not None and node.kv.lease != self.lease.id else None
        instance = self.app[keys.IDENTITY].instance_id
        if isinstance(other, Heartbeat) and other.instance_id != instance:
            conflict = (
                f"node id {self.node_id} is registered by another sidecar ({other.url}, "
                f"instance {other.instance_id[:12]}); waiting for its etcd lease to end"
            )
            if self.conflict != conflict:
                log.error("etcd_node_id_in_use", other_url=other.url, other=other.instance_id)
            self.conflict = conflict
            return True
        if self.conflict is not None:
            log.info("etcd_node_id_free", node_id=self.node_id)
        self.conflict = None
        return False

    async def claim(self) -> None:
        """Claim every agent of ours nobody holds; give back the ones our (healthy) daemon
        no longer has. Both by compare-and-swap, so nobody else's claim is ever touched."""
        snapshot = self.app[keys.WATCHER].snapshot
        ours = {a.id for a in snapshot.agents if a.id != LOCAL_AGENT}
        owners = self.cache.owners("claims")
        # Bookkeeping covers the current roster only, so it cannot grow with roster churn.
        self.claim_attempts = {a: r for a, r in self.claim_attempts.items() if a in ours}
        elsewhere, self._claimed_elsewhere = self._claimed_elsewhere, {}
        for agent_id in sorted(ours):
            owner = owners.get(agent_id)
            # An unreadable claim is still a claim: logged when seen, never overwritten.
            unclaimed = self.cache.get("claims", agent_id) is None
            if unclaimed and self.claim_attempts.get(agent_id, 0) <= self.cache.revision:
                won, kv = await self.client.create(
                    self.layout.claim(agent_id),
                    encode(OwnerRecord(node_id=self.node_id, at=self.clock.time())),
                )
                # Until the watch shows this revision the cache cannot know the answer.
                self.claim_attempts[agent_id] = kv.mod_revision
                if won:
                    log.info("agent_claimed", agent_id=agent_id, revision=kv.mod_revision)
                    continue
                owner = owner_of(kv.value) or "?"
            if owner is not None and owner != self.node_id:
                if elsewhere.get(agent_id) != owner:
                    log.warning("agent_claimed_elsewhere", agent_id=agent_id, owner=owner)
                self._claimed_elsewhere[agent_id] = owner
        if not snapshot.healthy:
            return  # an unreadable roster is not a smaller one
        for agent_id, entry in self.cache.of_kind("claims").items():
            record = entry.record
            mine = isinstance(record, OwnerRecord) and record.node_id == self.node_id
            if mine and agent_id not in ours:
                key = self.layout.claim(agent_id)
                done = await self.client.txn(
                    [Compare.unchanged(key, entry.kv.mod_revision)], [Delete(key)]
                )
                if done.succeeded:
                    log.info("agent_claim_released", agent_id=agent_id)

    # -- the watch -----------------------------------------------------------------------
    def start_watch(self, start_revision: int) -> None:
        for task in self._watches:
            task.cancel()
        self.watch_next = start_revision
        self.watch_connected = False
        task = asyncio.create_task(self._watch(start_revision), name="etcd-watch")
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _watch(self, start_revision: int) -> None:
        try:
            async for batch in self.client.watch(
                self.layout.prefix,
                prefix=True,
                start_revision=start_revision,
                on_disconnect=self._watch_broke,
                retry_max=max(self.interval, 1.0),
            ):
                if batch.created:
                    if self.watch_error is not None:
                        log.info("etcd_watch_resumed", revision=batch.next_revision)
                    self.watch_connected, self.watch_error = True, None
                    self.watch_endpoint = batch.endpoint
                self.watch_next = batch.next_revision
                changed = self.cache.apply(batch.events)
                if changed or batch.created:
                    self.publish()
        except WatchCompacted as exc:
            # The history between our copy and now is gone: read everything again.
            log.warning("etcd_watch_compacted", error=exc.message)
            self.synced = False
            self.watch_connected = False
            self.wake.set()

    def _watch_broke(self, exc: EtcdError) -> None:
        self.watch_connected = False
        if self.watch_error != exc.message:
            log.warning("etcd_watch_broken", error=exc.message)
        self.watch_error = exc.message

    # -- the view ------------------------------------------------------------------------
    def publish(self) -> ClusterView:
        for key, problem in self.cache.problems:
            log.warning("etcd_record_unreadable", key=key, problem=problem)
        self.cache.problems.clear()
        received = self.last_ok if self.last_ok is not None else self.clock.monotonic()
        views = self.app[keys.MEMBERSHIP].views
        current = views.get(VIEW_NAME)
        if current is not None and self._built == self.cache.changes:
            view = attrs.evolve(current, received_at=received)
        else:
            view = build_view(self.cache, self.app[keys.IDENTITY].protocol, received)
            self._built = self.cache.changes
            self._log_changes(view)
        views[VIEW_NAME] = view
        return view

    def _log_changes(self, view: ClusterView) -> None:
        alive = {p.node_id for p in view.peers if p.alive}
        if self._alive is not None:
            for node_id in sorted(self._alive - alive):
                log.warning("peer_expired", node_id=node_id, backend="etcd")
            for node_id in sorted(alive - self._alive):
                log.info("peer_alive", node_id=node_id, backend="etcd")
        self._alive = alive
        collisions = {(c.agent_id, c.winner) for c in view.collisions}
        for agent_id, winner in sorted(collisions - self._collisions):
            log.warning("agent_collision", agent_id=agent_id, owner=winner, backend="etcd")
        self._collisions = collisions

    def summary(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "endpoints": list(self.client.endpoints),
            "endpoint": self.client.endpoint,
            "prefix": self.layout.prefix,
            "ok": self.error is None and self.last_ok is not None,
            "error": self.error,
            "failures": self.failures,
            "last_ok_age_s": round(now - self.last_ok, 3) if self.last_ok is not None else None,
            "lease": f"{self.lease.id:x}" if self.lease else None,
            "lease_ttl_s": self.lease_ttl,
            "call_timeout_s": round(self.client.timeout, 3),
            "registered": self.registered is not None,
            "conflict": self.conflict,
            "revision": self.cache.revision,
            "watch": {
                "connected": self.watch_connected,
                "endpoint": self.watch_endpoint if self.watch_connected else None,
                "error": self.watch_error,
            },
        }

    def readiness(self) -> tuple[bool, str]:
        if self.conflict is not None:
            return False, self.conflict
        if self.last_ok is None:
            return False, f"etcd has not answered yet: {self.error or 'connecting'}"
        if self.error is not None:
            age = self.clock.monotonic() - self.last_ok
            return False, f"etcd unreachable (routing from a view {age:.1f}s old): {self.error}"
        if not self.watch_connected:
            return False, f"etcd watch is down: {self.watch_error or 'connecting'}"
        return True, f"ready (registry in etcd at {self.client.endpoint})"

    # -- lifetime ------------------------------------------------------------------------
    async def close(self) -> None:
        for task in list(self._watches):
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self.lease is not None:
            # Leaving on purpose: drop nodes/<id> now instead of after the TTL.
            try:
                await self.client.lease_revoke(self.lease.id)
                log.info("etcd_lease_revoked", lease=f"{self.lease.id:x}")
            except EtcdError as exc:
                log.warning("etcd_lease_revoke_failed", error=exc.message)


ETCD = web.AppKey("etcd", EtcdBackend)


async def etcd_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs instead of the heartbeat loop when `registry_backend = "etcd"`."""
    settings = app[keys.SETTINGS]
    client = EtcdClient(app[keys.HTTP], settings.etcd_endpoints, timeout=call_timeout(settings))
    identity = app[keys.IDENTITY]
    if identity.coordinator:
        # Only a promotion persisted before the switch to etcd gets here (config refuses it);
        # a coordinator would answer status from its empty registry instead of etcd's view.
        log.warning("coordinator_role_ignored", reason="registry_backend is etcd")
        identity.coordinator = False
    backend = EtcdBackend(app, client)
    app[ETCD] = backend
    # Never block start-up on etcd: the loop keeps trying, and /readyz says why it is not ready.
    task = asyncio.create_task(backend.run(), name="etcd-session")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await backend.close()
