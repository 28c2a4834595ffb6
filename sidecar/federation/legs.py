"""The legs of a federated read: asking each contributing node (in parallel, each within
its timeout, past open circuit breakers), tagging this node's own hits, and describing
every leg in the response's `cluster` block (see `sidecar/federation/fanout.py`)."""

from __future__ import annotations

import asyncio
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

    def block(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "role": self.role,
            "status": self.status,
            "took_ms": self.took_ms,
            "hits": len(self.hits),
            "error": self.error,
        }


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


def start_contributions(
    app: web.Application,
    contributors: list[PeerView | None],
    reader: Reader,
    ask: dict[str, Any],
    limit: int,
) -> tuple[list[LegResult], dict[asyncio.Task[None], LegResult]]:
    """Start asking every contributor (`ask`: ContributeRequest's `recall` or `expand`);
    down and breaker-skipped nodes get their leg at once, without a request."""
    settings = app[keys.SETTINGS]
    me = app[keys.IDENTITY].node_id
    snapshot = app[keys.WATCHER].snapshot
    breakers, now = app[PROXY].breakers, app[keys.CLOCK].monotonic()
    node_timeout = min(settings.fanout_node_timeout, settings.fanout_deadline)
    message = ContributeRequest(reader=reader, limit=limit, timeout_ms=node_timeout * 1000, **ask)
    legs: list[LegResult] = []
    tasks: dict[asyncio.Task[None], LegResult] = {}
    for peer in contributors:
        node_id = me if peer is None else peer.node_id
        roster = {
            a.id: a for a in (snapshot.agents if peer is None or node_id == me else peer.agents)
        }
        leg = LegResult(
            node_id=node_id,
            role="contributor",
            agents=contributing_agents(roster, reader.read_policy, reader.policy_group),
        )
        legs.append(leg)
        if node_id != me and peer is not None and peer.state != "alive":
            leg.status, leg.error = "down", f"node is {peer.state} in the registry"
            continue
        skip = breakers.admit(node_id, now)
        if skip is not None:
            leg.status, leg.error = "skipped", skip
            continue
        url = None if node_id == me or peer is None else peer.url
        task = asyncio.create_task(_contribute_leg(app, leg, url, message, node_timeout))
        tasks[task] = leg
    return legs, tasks


async def _contribute_leg(
    app: web.Application,
    leg: LegResult,
    url: str | None,
    message: ContributeRequest,
    timeout: float,
) -> None:
    started = time.perf_counter()
    try:
        if url is None:
            answer: Any = await compute(app, message)
            status = 200
        else:
            response = await app[keys.PEERS].call(
                "POST", url, CONTRIBUTE_PATH, unstructure(message), timeout=timeout
            )
            answer, status = response.body, response.status
    except ContributionFailed as exc:
        leg.status, leg.error = ("timeout" if exc.status == 504 else "error"), exc.message
        return
    except PeerUnreachable as exc:
        leg.status = "timeout" if "timed out" in exc.message else "error"
        leg.error = exc.message
        return
    finally:
        leg.took_ms = round((time.perf_counter() - started) * 1000, 3)
    hits = answer.get("hits") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(hits, list):
        error = answer.get("error") if isinstance(answer, dict) else answer
        leg.status, leg.error = "error", f"answered {status}: {str(error)[:300]}"
        return
    leg.hits = [h for h in hits if isinstance(h, dict)]


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
