"""The legs of a federated read: asking each contributing node (in parallel, past open
circuit breakers, skipping nodes that are down or whose daemon is unhealthy), waiting for
each as long as its learned budget and the owner's own leg allow, tagging this node's own
hits, and describing every leg in the response's `cluster` block (see
`sidecar/federation/fanout.py`)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import attrs
from aiohttp import web

from sidecar import keys
from sidecar.federation.contribute import (
    CONTRIBUTE_PATH,
    ContributeRequest,
    ContributionFailed,
    Reader,
    compute,
)
from sidecar.keys import PROXY
from sidecar.membership.view import ClusterView
from sidecar.memory.routing import Target
from signet_cluster.converter import unstructure
from signet_cluster.daemon.ownership import OwnershipUnavailable
from signet_cluster.daemon.probe import DaemonSnapshot
from signet_cluster.daemon.visibility import contributing_agents
from signet_cluster.errors import PeerUnreachable
from signet_cluster.protocol import PeerView


@attrs.define
class LegResult:
    node_id: str
    role: str  # "owner" | "contributor"
    status: str = "ok"  # ok | timeout | error | skipped | down
    took_ms: float | None = None
    hits: list[dict[str, Any]] = attrs.Factory(list)
    error: str | None = None
    agents: list[str] = attrs.Factory(list)  # whose memories this leg carries
    note: str | None = None

    def block(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "node_id": self.node_id,
            "role": self.role,
            "status": self.status,
            "took_ms": self.took_ms,
            "hits": len(self.hits),
            "error": self.error,
        }
        if self.note is not None:
            block["note"] = self.note
        return block


def contributors(app: web.Application, view: ClusterView, owner: str) -> list[PeerView | None]:
    """Every node but the owner; None stands for this node when the view lacks it."""
    me = app[keys.IDENTITY].node_id
    peers: list[PeerView | None] = [p for p in view.peers if p.node_id != owner]
    if me != owner and all(p.node_id != me for p in view.peers):
        peers.append(None)
    return peers


async def tag_hits(app: web.Application, body: dict[str, Any], key: str = "results") -> None:
    """Tag each hit of this node's own answer (`body[key]`) with this node and the owning
    agent."""
    hits = body.get(key)
    if not isinstance(hits, list):
        return
    ids = [h["id"] for h in hits if isinstance(h, dict) and isinstance(h.get("id"), str)]
    try:
        owners = await asyncio.to_thread(app[PROXY].ownership.lookup, ids)
    except OwnershipUnavailable:
        owners = {}
    node = app[keys.IDENTITY].node_id
    for hit in hits:
        if isinstance(hit, dict):
            hit_id = hit.get("id")
            owner = owners.get(hit_id) if isinstance(hit_id, str) else None
            hit["cluster"] = {"node_id": node, "agent_id": owner.agent_id if owner else None}


def count_fanout(app: web.Application, legs: list[LegResult], status: int, started: float) -> None:
    metrics = app[keys.METRICS]
    missing = [leg.status for leg in legs if leg.status != "ok"]
    outcome = "refused" if status == 503 else "partial" if missing else "complete"
    metrics.fanout.labels(outcome=outcome).inc()
    for cause in missing:
        metrics.fanout_partial.labels(cause=cause).inc()
    metrics.fanout_seconds.observe(time.perf_counter() - started)


@attrs.define
class Outcome:
    """What a contribution came to, whenever it finished (the leg copies it if in time)."""

    status: str = "ok"
    hits: list[dict[str, Any]] = attrs.Factory(list)
    error: str | None = None
    took_ms: float | None = None
    note: str | None = None  # an ok contribution that may lack something (window full)


@attrs.define
class Pending:
    """A contribution being waited for: its leg, its task and its learned budget."""

    leg: LegResult
    task: asyncio.Task[Outcome]
    budget: float


def _unavailable(peer: PeerView | None, snapshot: DaemonSnapshot) -> str | None:
    """Why this node cannot contribute now without asking it, or None."""
    if peer is not None and peer.state != "alive":
        return f"node is {peer.state} in the registry"
    healthy, error = (
        (snapshot.healthy, snapshot.error)
        if peer is None
        else (
            peer.daemon.healthy,
            peer.daemon.error,
        )
    )
    if not healthy:
        return f"its daemon is unhealthy: {error or 'no reason given'}"
    return None


def start_contributions(
    app: web.Application,
    contributors: list[PeerView | None],
    reader: Reader,
    ask: dict[str, Any],
    limit: int,
) -> tuple[list[LegResult], list[Pending]]:
    """Start asking every contributor (`ask`: ContributeRequest's `recall` or `expand`);
    nodes that are down, whose daemon is unhealthy, or whose breaker is open get their leg
    at once, without a request."""
    settings = app[keys.SETTINGS]
    me = app[keys.IDENTITY].node_id
    snapshot = app[keys.WATCHER].snapshot
    federation = app[keys.FEDERATION]
    now = app[keys.CLOCK].monotonic()
    ceiling = settings.fanout_ceiling
    message = ContributeRequest(reader=reader, limit=limit, timeout_ms=ceiling * 1000, **ask)
    legs: list[LegResult] = []
    pending: list[Pending] = []
    for peer in contributors:
        node_id = me if peer is None else peer.node_id
        local = peer is None or node_id == me
        roster = {a.id: a for a in (snapshot.agents if local or peer is None else peer.agents)}
        leg = LegResult(
            node_id=node_id,
            role="contributor",
            agents=contributing_agents(roster, reader.read_policy, reader.policy_group),
        )
        legs.append(leg)
        why = _unavailable(None if local else peer, snapshot)
        if why is not None:
            leg.status, leg.error = "down", why
            continue
        skip = federation.breakers.admit(node_id, now)
        if skip is not None:
            leg.status, leg.error = "skipped", skip
            continue
        if not local and peer is not None and peer.instance_id is not None:
            federation.restarted(node_id, peer.instance_id)
        url = None if local or peer is None else peer.url
        task = federation.spawn(_contribute(app, node_id, url, message, ceiling))
        pending.append(Pending(leg, task, federation.budget(node_id, settings)))
    return legs, pending


async def _contribute(
    app: web.Application, node_id: str, url: str | None, message: ContributeRequest, ceiling: float
) -> Outcome:
    """Ask one node, within the ceiling; its breaker and learned latency are updated here,
    whether or not the read still waits (a late answer is a success, not a failure)."""
    outcome = await _ask(app, url, message, ceiling)
    federation = app[keys.FEDERATION]
    ok = outcome.status == "ok"
    if ok and outcome.took_ms is not None:
        federation.latencies.observe(node_id, outcome.took_ms / 1000)
    federation.breakers.record(node_id, ok, app[keys.CLOCK].monotonic(), outcome.error)
    return outcome


async def _ask(
    app: web.Application, url: str | None, message: ContributeRequest, ceiling: float
) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome()
    try:
        if url is None:
            answer: Any = await asyncio.wait_for(compute(app, message), ceiling)
            status = 200
        else:
            response = await app[keys.PEERS].call(
                "POST", url, CONTRIBUTE_PATH, unstructure(message), timeout=ceiling
            )
            answer, status = response.body, response.status
    except TimeoutError:
        outcome.status, outcome.error = "timeout", f"no answer within the ceiling ({ceiling:g}s)"
        return outcome
    except ContributionFailed as exc:
        outcome.status, outcome.error = ("timeout" if exc.status == 504 else "error"), exc.message
        return outcome
    except PeerUnreachable as exc:
        outcome.status = "timeout" if "timed out" in exc.message else "error"
        outcome.error = exc.message
        return outcome
    finally:
        outcome.took_ms = round((time.perf_counter() - started) * 1000, 3)
    hits = answer.get("hits") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(hits, list):
        error = answer.get("error") if isinstance(answer, dict) else answer
        outcome.status, outcome.error = "error", f"answered {status}: {str(error)[:300]}"
        return outcome
    outcome.hits = [h for h in hits if isinstance(h, dict)]
    if isinstance(answer, dict) and isinstance(answer.get("note"), str):
        outcome.note = answer["note"]
    return outcome


async def await_contributions(
    pending: list[Pending], owner: asyncio.Task[Any], grace: float, started: float
) -> None:
    """Wait for the contributions: each for its learned budget from `started`, and never
    less than the owner's own leg took plus `grace` (the answer waits for the owner anyway,
    so a contributor as slow as the owner costs nothing). A contribution still running when
    its time is up is reported as a timeout but keeps running in the background."""
    waiting = {p.task: p for p in pending}
    owner_done: float | None = time.perf_counter() if owner.done() else None
    while waiting:
        now = time.perf_counter()
        if owner_done is None and owner.done():
            owner_done = now
        due: dict[asyncio.Task[Outcome], float] = {}
        for task, p in waiting.items():
            # Until the owner answers nobody is cut (each leg still ends by the ceiling).
            due[task] = (
                math.inf if owner_done is None else max(started + p.budget, owner_done + grace)
            )
        for task in [t for t, at in due.items() if not t.done() and at <= now]:
            p = waiting.pop(task)
            waited = (now - started) * 1000
            p.leg.status = "timeout"
            p.leg.took_ms = round(waited, 3)
            owner_ms = ((owner_done or now) - started) * 1000
            p.leg.error = (
                f"no answer after {waited:.0f} ms (its budget {p.budget * 1000:.0f} ms, owner "
                f"answered at {owner_ms:.0f} ms); still running, and a late answer is not "
                "counted as a failure"
            )
        for task in [t for t in waiting if t.done()]:
            p = waiting.pop(task)
            outcome = task.result()
            p.leg.status, p.leg.hits = outcome.status, outcome.hits
            p.leg.error, p.leg.took_ms = outcome.error, outcome.took_ms
            p.leg.note = outcome.note
        if not waiting:
            return
        watch: set[asyncio.Future[Any]] = set(waiting)
        timeout: float | None = None
        if owner_done is None:
            # Nobody is cut before the owner answers: wake when it does (or a leg ends; each
            # ends by the ceiling on its own).
            watch.add(owner)
        else:
            timeout = max(0.0, min(due[t] for t in waiting) - now)
        await asyncio.wait(watch, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


def cluster_block(target: Target, legs: list[LegResult], started: float) -> dict[str, Any]:
    missing = sorted({a for leg in legs if leg.status != "ok" for a in leg.agents})
    return {
        "partial": any(leg.status != "ok" for leg in legs),
        "reader": {
            "agent_id": target.agent_id,
            "read_policy": target.read_policy,
            "policy_group": target.policy_group,
            "owner": target.node_id,
        },
        "nodes": [leg.block() for leg in legs],
        "missing_agents": missing,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }
