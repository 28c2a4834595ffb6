"""Federated reads: recall and both search routes across the cluster, by the reader's policy.

- `isolated` reader (or a read with nothing to fan out): only the owner answers; this is
  plain routing, and the owner's response is relayed unchanged.
- `shared` / `group` reader: the owner answers as the reader while every other node
  contributes (in parallel, one connection pool) the global memories the reader may see
  (`sidecar/contribute.py`); the lists are merged (`signet_cluster.merge`).

Contributors get a per-node timeout (`fanout_node_timeout`) and the whole fan-out a deadline
(`fanout_deadline`); nodes known to be down are skipped at once, and a node that keeps
failing is skipped for a while by its circuit breaker, then probed. The owner is waited for
like any routed request (its answer *is* the answer). Degradation is explicit: the response
gets a top-level `cluster` block and an `x-signet-cluster-missing: <missing>/<total>` header;
a reader that sends `x-signet-cluster-partial: deny` (or `?partial=deny`) gets a 503 instead
of an incomplete answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import attrs
from aiohttp import web

from signet_cluster.agent_resolution import RouteKind
from signet_cluster.converter import unstructure
from signet_cluster.errors import PeerUnreachable
from signet_cluster.merge import Leg, merge
from signet_cluster.ownership import OwnershipUnavailable
from signet_cluster.protocol import PeerView
from signet_cluster.visibility import contributing_agents

from . import keys
from .contribute import CONTRIBUTE_PATH, ContributeRequest, ContributionFailed, Reader, compute
from .forward import SERVED_BY_HEADER, DaemonError, to_response
from .keys import PROXY
from .membership import ClusterView
from .peers import ForwardFailed, RawResponse
from .proxy import forward_to_owner, serve_local
from .routing import Target, current_view, retry_after

PARTIAL_HEADER = "x-signet-cluster-partial"
MISSING_HEADER = "x-signet-cluster-missing"
_SEARCH_PARAMS = {
    "type": "type",
    "tags": "tags",
    "who": "who",
    "importance_min": "importance_min",
    "since": "since",
    "until": "until",
    "project": "project",
    "scope": "scope",
}
_RECALL_KEYS = (
    "query",
    "keywordQuery",
    "type",
    "tags",
    "who",
    "pinned",
    "importance_min",
    "importanceMin",
    "since",
    "until",
    "project",
    "scope",
    "time",
)


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


def _limit(value: object, default: int) -> int:
    try:
        number = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return max(1, min(50, number))


def contribution_query(
    kind: RouteKind, request: web.Request, parsed: dict[str, Any] | None
) -> tuple[dict[str, Any], int] | None:
    """The recall other nodes run for this read, and its limit; None when there is nothing
    to fan out (no query: the daemon answers with its own error or a listing)."""
    if kind is RouteKind.RECALL:
        if (
            parsed is None
            or not isinstance(parsed.get("query"), str)
            or not parsed["query"].strip()
        ):
            return None
        return {k: parsed[k] for k in _RECALL_KEYS if k in parsed}, _limit(parsed.get("limit"), 10)
    params = request.query
    q = params.get("q", "").strip()
    if not q or (kind is RouteKind.LEGACY_SEARCH and "distinct" in params):
        return None
    recall: dict[str, Any] = {"query": q}
    for name, field in _SEARCH_PARAMS.items():
        if name in params:
            recall[field] = params[name]
    if params.get("pinned") in ("1", "true"):
        recall["pinned"] = True
    if "importance_min" in recall:
        try:
            recall["importance_min"] = float(recall["importance_min"])
        except ValueError:
            del recall["importance_min"]
    return recall, _limit(params.get("limit"), 20 if kind is RouteKind.LEGACY_SEARCH else 10)


def denies_partial(request: web.Request) -> bool:
    value = request.headers.get(PARTIAL_HEADER) or request.query.get("partial") or ""
    return value.strip().lower() == "deny"


def _contributors(app: web.Application, view: ClusterView, owner: str) -> list[PeerView | None]:
    """Every node but the owner; None stands for this node when the view lacks it."""
    me = app[keys.IDENTITY].node_id
    peers: list[PeerView | None] = [p for p in view.peers if p.node_id != owner]
    if me != owner and all(p.node_id != me for p in view.peers):
        peers.append(None)
    return peers


async def tag_hits(app: web.Application, body: dict[str, Any]) -> None:
    """Tag each hit of this node's own answer with this node and the owning agent."""
    hits = body.get("results")
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


def _json_response(body: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


async def federated_read(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
) -> web.StreamResponse:
    app = request.app
    started = time.perf_counter()
    # Cheapest checks first: most reads on a one-node cluster or by isolated readers end here.
    view = current_view(app) if target.read_policy in ("shared", "group") else None
    contributors = _contributors(app, view, target.node_id) if view is not None else []
    spec = contribution_query(kind, request, parsed) if contributors else None
    if spec is None or not contributors:
        return await _routed_read(request, kind, target, body, parsed, started)
    recall, limit = spec
    reader = Reader(
        agent_id=target.agent_id,
        read_policy=target.read_policy,
        policy_group=target.policy_group,
        node_id=app[keys.IDENTITY].node_id,
    )
    owner_task = asyncio.create_task(_owner_leg(request, kind, target, body, parsed))
    legs, tasks = _start_contributions(app, contributors, reader, recall, limit)
    remaining = app[keys.SETTINGS].fanout_deadline - (time.perf_counter() - started)
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=max(remaining, 0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    breakers, now = app[PROXY].breakers, app[keys.CLOCK].monotonic()
    for task, leg in tasks.items():
        if task.cancelled() or not task.done():
            leg.status = "timeout"
            leg.error = (
                f"no answer within the fan-out deadline ({app[keys.SETTINGS].fanout_deadline:g}s)"
            )
        breakers.record(leg.node_id, leg.status == "ok", now)
    owner_leg, raw, answer = await owner_task
    if raw is not None and answer is None:
        return to_response(raw, target.node_id)  # not a result list: the owner's own answer
    query = parsed.get("query") if parsed is not None else request.query.get("q")
    response = _merged(app, request, target, owner_leg, answer, legs, limit, query, started)
    _count(app, [owner_leg, *legs], response.status, started)
    return response


def _count(app: web.Application, legs: list[LegResult], status: int, started: float) -> None:
    metrics = app[keys.METRICS]
    missing = [leg.status for leg in legs if leg.status != "ok"]
    outcome = "refused" if status == 503 else "partial" if missing else "complete"
    metrics.fanout.labels(outcome=outcome).inc()
    for cause in missing:
        metrics.fanout_partial.labels(cause=cause).inc()
    metrics.fanout_seconds.observe(time.perf_counter() - started)


def _start_contributions(
    app: web.Application,
    contributors: list[PeerView | None],
    reader: Reader,
    recall: dict[str, Any],
    limit: int,
) -> tuple[list[LegResult], dict[asyncio.Task[None], LegResult]]:
    settings = app[keys.SETTINGS]
    me = app[keys.IDENTITY].node_id
    snapshot = app[keys.WATCHER].snapshot
    breakers, now = app[PROXY].breakers, app[keys.CLOCK].monotonic()
    node_timeout = min(settings.fanout_node_timeout, settings.fanout_deadline)
    message = ContributeRequest(
        reader=reader, recall=recall, limit=limit, timeout_ms=node_timeout * 1000
    )
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


async def _owner_leg(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
) -> tuple[LegResult, RawResponse | None, dict[str, Any] | None]:
    """The owner's answer as the reader: (leg, raw answer, parsed answer with tagged hits).
    The parsed answer is None when the owner did not answer with a result list (an error
    of the request itself, relayed unchanged), the raw one when it did not answer at all."""
    app = request.app
    view = current_view(app)
    peer = view.peer(target.node_id) if view is not None else None
    roster = {
        a.id: a for a in (peer.agents if peer is not None else app[keys.WATCHER].snapshot.agents)
    }
    readable = contributing_agents(roster, target.read_policy, target.policy_group)
    leg = LegResult(
        node_id=target.node_id, role="owner", agents=sorted({target.agent_id, *readable})
    )
    if target.kind == "unreachable":
        leg.status, leg.error = "down", f"owner is {target.owner_state} in the registry"
        return leg, None, None
    started = time.perf_counter()
    try:
        if target.kind == "local":
            raw = await serve_local(request, kind, target.agent_id, body, parsed, explicit=False)
        else:
            raw = await forward_to_owner(request, target, body, tag=True)
    except (DaemonError, ForwardFailed) as exc:
        leg.status = "timeout" if exc.timed_out else "error"
        leg.error = exc.message
        return leg, None, None
    finally:
        leg.took_ms = round((time.perf_counter() - started) * 1000, 3)
    try:
        answer = json.loads(raw.body) if raw.status == 200 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        return leg, raw, None
    if target.kind == "local":
        await tag_hits(app, answer)
    leg.hits = [h for h in answer["results"] if isinstance(h, dict)]
    return leg, raw, answer


def _merged(
    app: web.Application,
    request: web.Request,
    target: Target,
    owner: LegResult,
    answer: dict[str, Any] | None,
    contributions: list[LegResult],
    limit: int,
    query: object,
    started: float,
) -> web.StreamResponse:
    legs = [owner, *contributions]
    hits = merge(
        [Leg(leg.node_id, leg.role, leg.hits) for leg in legs if leg.status == "ok"], limit
    )
    block = cluster_block(target, legs, started)
    missing = sum(1 for leg in legs if leg.status != "ok")
    headers = {MISSING_HEADER: f"{missing}/{len(legs)}"}
    if missing and denies_partial(request):
        return _denied(app, block, headers)
    if answer is not None and owner.status == "ok":
        body = answer
        headers[SERVED_BY_HEADER] = target.node_id
    else:
        # The owner is missing: what the others hold, in the recall response's shape.
        body = {"query": query}
        headers[SERVED_BY_HEADER] = app[keys.IDENTITY].node_id
    body["results"] = hits
    meta = body.get("meta")
    if isinstance(meta, dict) and "totalReturned" in meta:
        meta["totalReturned"] = len(hits)
        meta["noHits"] = not hits
    body["cluster"] = block
    return _json_response(body, 200, headers)


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


def _denied(app: web.Application, block: dict[str, Any], headers: dict[str, str]) -> web.Response:
    headers = {**headers, "Retry-After": retry_after(app)}
    return _json_response(
        {
            "error": "incomplete answer refused (partial=deny): "
            + ", ".join(
                f"{n['node_id']} {n['status']}" for n in block["nodes"] if n["status"] != "ok"
            ),
            "code": "partial_denied",
            "cluster": block,
        },
        503,
        headers,
    )


async def _routed_read(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
    started: float,
) -> web.StreamResponse:
    """No fan-out: the owner alone answers, relayed unchanged; when it cannot, an empty
    partial answer naming it."""
    app = request.app
    if target.kind == "local":
        raw = await serve_local(request, kind, target.agent_id, body, parsed, explicit=False)
        return to_response(raw, target.node_id, ((MISSING_HEADER, "0/1"),))
    leg = LegResult(node_id=target.node_id, role="owner", agents=[target.agent_id])
    if target.kind == "remote":
        try:
            raw = await forward_to_owner(request, target, body)
        except ForwardFailed as exc:
            leg.status = "timeout" if exc.timed_out else "error"
            leg.error = exc.message
        else:
            return to_response(raw, target.node_id, ((MISSING_HEADER, "0/1"),))
    else:
        leg.status, leg.error = "down", f"owner is {target.owner_state} in the registry"
    block = cluster_block(target, [leg], started)
    headers = {MISSING_HEADER: "1/1"}
    if denies_partial(request):
        return _denied(app, block, headers)
    query = parsed.get("query") if parsed is not None else request.query.get("q")
    headers[SERVED_BY_HEADER] = app[keys.IDENTITY].node_id
    return _json_response({"results": [], "query": query, "cluster": block}, 200, headers)
